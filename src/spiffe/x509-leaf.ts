/**
 * Leaf X509-SVIDs: the server's hot path (one per SVID it signs), encoded with the small DER
 * writer. What is the same for every leaf of one issuer and entry (issuer name, subject, the
 * constant extensions) is encoded once and reused; per leaf only the serial, validity, key and
 * its SKI are encoded, in a handful of allocations (the leaf's DER building cost ~60 µs per SVID
 * before, about twice the ECDSA signature; see docs/benchmarks.md).
 */
import { verify as cryptoVerify, hash } from 'node:crypto'
import * as der from './der.js'
import { SvidError } from './errors.js'
import { SpiffeId, type TrustDomain } from './id.js'
import type { Signer } from './signer.js'
import {
  checkTimes,
  earlier,
  type IssueX509SvidParams,
  issuerKeyId,
  prepareIssuer,
  serialHex,
  type X509Issuer,
} from './x509-svid.js'

const DNS_NAME =
  /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/

/**
 * Issues a leaf X509-SVID: one URI SAN, cA=false, critical key usage without CA bits, EKU
 * serverAuth+clientAuth. Like SPIRE the subject is C=US, O=SPIRE, plus CN=<first DNS name>.
 * notAfter is clamped to the issuer's notAfter so the chain never outlives its CA.
 */
export async function issueX509Svid(params: IssueX509SvidParams): Promise<Uint8Array> {
  const id = checkId(params.spiffeId)
  const parent = await preparedLeafIssuer(params.issuer, id.trustDomain)
  const leaf = buildLeaf(params, parent)
  return leaf.finish(await params.issuer.signer.sign(leaf.tbs))
}

/**
 * issueX509Svid for several leaves of one issuer: every TBSCertificate is built first, then all
 * are signed in one signMany() call when the signer has it (one hop for the lot), else one by
 * one. A leaf that cannot be built is its own Error; a failed signature fails every leaf.
 */
export async function issueX509Svids(
  issuer: X509Issuer,
  leaves: readonly Omit<IssueX509SvidParams, 'issuer'>[],
): Promise<(Uint8Array | Error)[]> {
  // The issuer is prepared once per trust domain (its checks depend on it), before any leaf.
  const parents = new Map<string, LeafIssuer | Error>()
  const prepared: (PreparedLeaf | Error)[] = []
  for (const l of leaves) {
    try {
      const id = checkId(l.spiffeId)
      let parent = parents.get(id.trustDomain.name)
      if (!parent) {
        parent = await preparedLeafIssuer(issuer, id.trustDomain).catch((err: Error) => err)
        parents.set(id.trustDomain.name, parent)
      }
      if (parent instanceof Error) throw parent
      prepared.push(buildLeaf({ ...l, issuer }, parent))
    } catch (err) {
      prepared.push(err as Error)
    }
  }
  const ready = prepared.filter((p): p is PreparedLeaf => !(p instanceof Error))
  const signer = issuer.signer
  const tbs = ready.map((p) => p.tbs)
  let sigs: Uint8Array[]
  if (ready.length === 0) sigs = []
  else if (signer.signMany) sigs = await signer.signMany(tbs)
  else {
    sigs = []
    for (const t of tbs) sigs.push(await signer.sign(t))
  }
  if (sigs.length !== ready.length)
    throw new SvidError(`the signer returned ${sigs.length} signatures for ${ready.length} leaves`)
  let i = 0
  return prepared.map((p) => (p instanceof Error ? p : p.finish(sigs[i++]!)))
}

interface PreparedLeaf {
  readonly tbs: Uint8Array
  /** The certificate from the signer's raw signature over `tbs` (the first one per signer checked). */
  finish(raw: Uint8Array): Uint8Array
}

function checkId(id: SpiffeId): SpiffeId {
  if (!(id instanceof SpiffeId)) throw new SvidError('spiffeId must be a SpiffeId')
  if (id.path === '') {
    throw new SvidError('a leaf X509-SVID must have a SPIFFE ID with a non-root path')
  }
  return id
}

const ext = (oidDer: Uint8Array, critical: boolean, value: Uint8Array) =>
  critical ? der.seq(oidDer, der.boolTrue, der.octets(value)) : der.seq(oidDer, der.octets(value))

interface LeafTemplate {
  /** Subject Name. */
  readonly subject: Uint8Array
  /** basicConstraints, keyUsage, extKeyUsage and the SAN extension, concatenated. */
  readonly extensions: Uint8Array
}

// Per issuer, entry and key kind; entries are many but bounded by the datastore, and a full
// cache is simply dropped (rebuilding a template costs one leaf's encoding).
const templates = new Map<string, LeafTemplate>()
const MAX_TEMPLATES = 1024

function templateOf(
  parentKey: string,
  id: SpiffeId,
  dnsNames: readonly string[],
  rsa: boolean,
): LeafTemplate {
  // JSON, not a join: the names are checked only on a miss, so one name holding the separator
  // must not match the key of two valid names (and get their template without the check).
  const key = JSON.stringify([parentKey, rsa, id.toString(), dnsNames])
  const hit = templates.get(key)
  if (hit) return hit
  for (const d of dnsNames) {
    if (d.length > 253 || !DNS_NAME.test(d)) {
      throw new SvidError(`invalid DNS name ${JSON.stringify(d.slice(0, 80))}`)
    }
  }
  const rdns = [
    der.tlv(0x31, der.seq(der.oid('2.5.4.6'), der.printable('US'))),
    der.tlv(0x31, der.seq(der.oid('2.5.4.10'), der.utf8String('SPIRE'))),
  ]
  if (dnsNames[0] !== undefined) {
    rdns.push(der.tlv(0x31, der.seq(der.oid('2.5.4.3'), der.utf8String(dnsNames[0]))))
  }
  const sans = [
    der.tlv(0x86, new Uint8Array(Buffer.from(id.toString(), 'utf8'))),
    ...dnsNames.map((d) => der.tlv(0x82, new Uint8Array(Buffer.from(d, 'ascii')))),
  ]
  const t: LeafTemplate = {
    subject: der.seq(...rdns),
    extensions: concat(
      ext(LEAF.basicConstraints, true, LEAF.notCa),
      ext(LEAF.keyUsage, true, rsa ? LEAF.kuSignEncipher : LEAF.kuSign),
      ext(LEAF.extKeyUsage, false, LEAF.serverAndClientAuth),
      ext(LEAF.san, false, der.seq(...sans)),
    ),
  }
  if (templates.size >= MAX_TEMPLATES) templates.clear()
  templates.set(key, t)
  return t
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts)
}

// The validity of leaves signed within the same second is the same bytes.
let lastValidity: { nb: number; na: number; der: Uint8Array } | undefined

function validity(notBefore: Date, notAfter: Date): Uint8Array {
  const nb = Math.floor(notBefore.getTime() / 1000)
  const na = Math.floor(notAfter.getTime() / 1000)
  if (lastValidity?.nb === nb && lastValidity.na === na) return lastValidity.der
  const v = der.seq(der.time(notBefore), der.time(notAfter))
  lastValidity = { nb, na, der: v }
  return v
}

function buildLeaf(params: IssueX509SvidParams, parent: LeafIssuer): PreparedLeaf {
  const id = checkId(params.spiffeId)
  const dnsNames = params.dnsNames ?? []
  const rsa = params.subjectPublicKey.asymmetricKeyType === 'rsa'
  const t = templateOf(parent.key, id, dnsNames, rsa)
  const notAfter = earlier(parent.notAfter, params.notAfter)
  checkTimes(params.notBefore, notAfter)
  const pub = der.spkiOf(params.subjectPublicKey)
  const tbs = der.seq(
    LEAF.version,
    der.uint(new Uint8Array(Buffer.from(serialHex(params.serial), 'hex'))),
    parent.signatureAlgorithm,
    parent.issuerName,
    validity(params.notBefore, notAfter),
    t.subject,
    pub,
    der.tlv(
      0xa3,
      der.seq(t.extensions, ext(LEAF.ski, false, der.octets(subjectKeyId(pub))), parent.akiExt),
    ),
  )
  const signer = params.issuer.signer
  const finish = (raw: Uint8Array): Uint8Array => {
    const signature = signer.keyType.startsWith('ec') ? der.p1363ToDer(raw) : raw
    // A hardware signer returning garbage should fail here, not in every relying party: check
    // the first signature of each signer (later ones come from the same, now proven, key path).
    if (!checkedSigners.has(signer)) {
      const h = signer.keyType === 'ec-p384' ? 'sha384' : 'sha256'
      if (!cryptoVerify(h, tbs, signer.publicKey, signature)) {
        throw new SvidError('the signer produced a signature that does not verify')
      }
      checkedSigners.add(signer)
    }
    return der.seq(tbs, parent.signatureAlgorithm, der.bits(signature))
  }
  return { tbs, finish }
}

const checkedSigners = new WeakSet<Signer>()

/** Constant parts of every leaf, encoded once. */
const LEAF = {
  version: der.tlv(0xa0, der.uint(Uint8Array.of(2))),
  basicConstraints: der.oid('2.5.29.19'),
  keyUsage: der.oid('2.5.29.15'),
  extKeyUsage: der.oid('2.5.29.37'),
  san: der.oid('2.5.29.17'),
  ski: der.oid('2.5.29.14'),
  aki: der.oid('2.5.29.35'),
  notCa: der.seq(),
  // KeyUsage BIT STRINGs: digitalSignature (bit 0); digitalSignature + keyEncipherment (bits 0, 2).
  kuSign: Uint8Array.of(0x03, 0x02, 0x07, 0x80),
  kuSignEncipher: Uint8Array.of(0x03, 0x02, 0x05, 0xa0),
  serverAndClientAuth: der.seq(der.oid('1.3.6.1.5.5.7.3.1'), der.oid('1.3.6.1.5.5.7.3.2')),
}

const SIGNATURE_ALGORITHMS = {
  'ec-p256': der.seq(der.oid('1.2.840.10045.4.3.2')),
  'ec-p384': der.seq(der.oid('1.2.840.10045.4.3.3')),
  'rsa-2048': der.seq(der.oid('1.2.840.113549.1.1.11'), Uint8Array.of(0x05, 0x00)),
  'rsa-3072': der.seq(der.oid('1.2.840.113549.1.1.11'), Uint8Array.of(0x05, 0x00)),
  'rsa-4096': der.seq(der.oid('1.2.840.113549.1.1.11'), Uint8Array.of(0x05, 0x00)),
} as const

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING's bits. */
function subjectKeyId(spkiDer: Uint8Array): Uint8Array {
  const outer = der.readTlv(spkiDer, 0, 'SubjectPublicKeyInfo')
  const [, bitString] = der.children(outer.value, 'SubjectPublicKeyInfo')
  if (bitString?.tag !== 0x03) throw new SvidError('SubjectPublicKeyInfo has no key')
  return new Uint8Array(hash('sha1', bitString.value.subarray(1), 'buffer'))
}

interface LeafIssuer {
  /** The cache key: trust domain, key type, certificate hash. */
  readonly key: string
  readonly issuerName: Uint8Array
  /** The whole authorityKeyIdentifier extension. */
  readonly akiExt: Uint8Array
  readonly notAfter: Date
  readonly signatureAlgorithm: Uint8Array
}

// Issuers are few (the active CA, one at a time): remember what parsing them gives.
const leafIssuers = new Map<string, LeafIssuer>()

async function preparedLeafIssuer(issuer: X509Issuer, td: TrustDomain): Promise<LeafIssuer> {
  // Keyed by certificate and trust domain: prepareIssuer's checks depend on both.
  const key = `${td.name}:${issuer.signer.keyType}:${hash('sha256', issuer.certificate, 'base64')}`
  const cached = leafIssuers.get(key)
  // The cache is keyed by certificate; the signer must still be the one holding its key.
  if (cached && checkedIssuerSigners.get(issuer.signer) === key) return cached
  const parent = prepareIssuer(issuer, td, 'SVIDs')
  const keyId = new Uint8Array(Buffer.from(await issuerKeyId(parent.cert), 'hex'))
  const prepared: LeafIssuer = {
    key,
    issuerName: new Uint8Array(parent.cert.subjectName.toArrayBuffer()),
    akiExt: ext(LEAF.aki, false, der.seq(der.tlv(0x80, keyId))),
    notAfter: parent.notAfter,
    signatureAlgorithm: SIGNATURE_ALGORITHMS[issuer.signer.keyType],
  }
  if (leafIssuers.size > 16) leafIssuers.clear()
  leafIssuers.set(key, prepared)
  checkedIssuerSigners.set(issuer.signer, key)
  return prepared
}

const checkedIssuerSigners = new WeakMap<Signer, string>()
