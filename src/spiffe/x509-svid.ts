import {
  verify as cryptoVerify,
  getRandomValues,
  hash,
  type KeyObject,
  X509Certificate as NodeX509,
} from 'node:crypto'
import { x509 } from '../common/x509.js'
import * as der from './der.js'
import { SvidError } from './errors.js'
import { SpiffeId, type TrustDomain } from './id.js'
import { type Signer, webCryptoAlgorithm } from './signer.js'
import { signerCrypto, signerCryptoKey } from './webcrypto.js'
import { isCa, KU, type PeculiarCert, parseCert, uriSans } from './x509-cert.js'

// Validation lives in x509-svid-validate.ts; re-exported so callers keep one module.
export { type ValidatedX509Svid, validateX509Svid } from './x509-svid-validate.js'

/**
 * X509-SVID issuance per the X509-SVID spec. CA certificates are built with @peculiar/x509 and
 * leaves encoded directly (hot path), both signed through a Signer, so CA keys may live in a TPM or
 * HSM.
 */

export interface X509Issuer {
  /** The issuing CA certificate, DER. */
  readonly certificate: Uint8Array
  /** Signs with the private key of `certificate`. */
  readonly signer: Signer
}

export interface IssueX509CaParams {
  readonly subjectPublicKey: KeyObject
  readonly trustDomain: TrustDomain
  /** The parent CA; omit (and pass selfSigner) for a self-signed root. */
  readonly issuer?: X509Issuer
  /** The new CA's own signer, for a self-signed root. */
  readonly selfSigner?: Signer
  readonly notBefore: Date
  readonly notAfter: Date
  readonly serial?: bigint
  /** RFC 4514 string; default C=US, O=SPIFFE, serialNumber=<serial>. */
  readonly subject?: string
}

export interface IssueX509SvidParams {
  readonly subjectPublicKey: KeyObject
  readonly spiffeId: SpiffeId
  readonly dnsNames?: readonly string[]
  readonly issuer: X509Issuer
  readonly notBefore: Date
  readonly notAfter: Date
  readonly serial?: bigint
}

type CreateParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
type SigningKey = Extract<CreateParams, { signingKey: unknown }>['signingKey']
type X509Crypto = Parameters<typeof x509.X509CertificateGenerator.create>[1]

function spki(key: KeyObject): Uint8Array {
  return der.spkiOf(key)
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function sameKey(a: KeyObject, b: KeyObject): boolean {
  return sameBytes(spki(a), spki(b))
}

/** A positive serial of at most 20 octets (RFC 5280 §4.1.2.2), random when not given. */
function serialHex(serial: bigint | undefined): string {
  let s = serial
  if (s === undefined) {
    const r = getRandomValues(new Uint8Array(16))
    r[0] = r[0]! & 0x7f // positive, and never needs a leading zero octet
    s = BigInt(`0x${Buffer.from(r).toString('hex')}`)
    if (s === 0n) s = 1n
  }
  if (s <= 0n || s >= 1n << 159n) {
    throw new SvidError('serial number must be positive and fit in 20 octets')
  }
  const hex = s.toString(16)
  return hex.length % 2 === 0 ? hex : `0${hex}`
}

function earlier(a: Date, b: Date): Date {
  return a.getTime() < b.getTime() ? a : b
}

function checkTimes(notBefore: Date, notAfter: Date): void {
  if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
    throw new SvidError('notBefore and notAfter must be valid dates')
  }
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new SvidError('notAfter must be after notBefore (after clamping to the issuer)')
  }
}

/** The issuer's subject key identifier (hex), from its SKI extension or computed as RFC 5280. */
async function issuerKeyId(issuer: PeculiarCert): Promise<string> {
  const ski = issuer.getExtension(x509.SubjectKeyIdentifierExtension)
  if (ski !== null) return ski.keyId
  return Buffer.from(await issuer.publicKey.getKeyIdentifier()).toString('hex')
}

interface PreparedIssuer {
  cert: PeculiarCert
  signer: Signer
  notAfter: Date
}

function prepareIssuer(issuer: X509Issuer, td: TrustDomain, what: string): PreparedIssuer {
  const { p, n } = parseCert(issuer.certificate, 'issuer certificate')
  if (!isCa(p)) throw new SvidError(`issuer certificate is not a CA (cA=true, keyCertSign)`)
  if (!sameKey(n.publicKey, issuer.signer.publicKey)) {
    throw new SvidError("issuer signer's key does not match the issuer certificate")
  }
  // A CA that names its trust domain must not issue for another one.
  for (const uri of uriSans(p)) {
    if (!uri.startsWith('spiffe://')) continue
    const caId = SpiffeId.parse(uri)
    if (!caId.memberOf(td)) {
      throw new SvidError(`a CA of ${caId.trustDomain} cannot issue ${what} in ${td}`)
    }
  }
  return { cert: p, signer: issuer.signer, notAfter: p.notAfter }
}

async function sign(
  params: {
    serial: string
    subject: string | x509.JsonName
    issuerName: string | x509.JsonName | InstanceType<typeof x509.Name>
    notBefore: Date
    notAfter: Date
    subjectPublicKey: KeyObject
    extensions: InstanceType<typeof x509.Extension>[]
  },
  signer: Signer,
): Promise<Uint8Array> {
  const crypto = signerCrypto(signer) as unknown as X509Crypto
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: params.serial,
      subject: params.subject,
      issuer: params.issuerName,
      notBefore: params.notBefore,
      notAfter: params.notAfter,
      publicKey: spki(params.subjectPublicKey),
      signingKey: signerCryptoKey(signer) as unknown as SigningKey,
      signingAlgorithm: webCryptoAlgorithm(signer.keyType),
      extensions: params.extensions,
    },
    crypto,
  )
  const der = new Uint8Array(cert.rawData)
  // A hardware signer returning garbage should fail here, not in every relying party.
  if (!new NodeX509(der).verify(signer.publicKey)) {
    throw new SvidError('the signer produced a signature that does not verify')
  }
  return der
}

/**
 * Issues a signing CA for `trustDomain`: self-signed (selfSigner) or under `issuer`. The CA carries
 * the path-less ID spiffe://<td> as its URI SAN, as the spec recommends for signing certificates.
 */
export async function issueX509Ca(params: IssueX509CaParams): Promise<Uint8Array> {
  const { issuer, selfSigner, trustDomain: td } = params
  if ((issuer === undefined) === (selfSigner === undefined)) {
    throw new SvidError('issueX509Ca needs exactly one of issuer and selfSigner')
  }
  if (selfSigner !== undefined && !sameKey(selfSigner.publicKey, params.subjectPublicKey)) {
    throw new SvidError("a self-signed CA's selfSigner must hold the subject key")
  }
  const parent = issuer === undefined ? undefined : prepareIssuer(issuer, td, 'a CA')
  const notAfter = parent ? earlier(parent.notAfter, params.notAfter) : params.notAfter
  checkTimes(params.notBefore, notAfter)
  const serial = serialHex(params.serial)
  const subject: string | x509.JsonName = params.subject ?? [
    { C: ['US'] },
    { O: ['SPIFFE'] },
    // The serial in the subject keeps successive CAs apart for path builders that match names.
    { '2.5.4.5': [BigInt(`0x${serial}`).toString()] },
  ]
  const pub = spki(params.subjectPublicKey)
  const extensions: InstanceType<typeof x509.Extension>[] = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(KU.keyCertSign | KU.cRLSign, true),
    // The spec makes the URI SAN critical when the subject is empty.
    new x509.SubjectAlternativeNameExtension(
      [{ type: 'url', value: td.idString() }],
      params.subject === '',
    ),
    await x509.SubjectKeyIdentifierExtension.create(pub, false),
  ]
  if (parent) {
    extensions.push(new x509.AuthorityKeyIdentifierExtension(await issuerKeyId(parent.cert)))
  }
  return sign(
    {
      serial,
      subject,
      issuerName: parent ? parent.cert.subjectName : subject,
      notBefore: params.notBefore,
      notAfter,
      subjectPublicKey: params.subjectPublicKey,
      extensions,
    },
    parent ? parent.signer : selfSigner!,
  )
}

const DNS_NAME =
  /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/

/**
 * Issues a leaf X509-SVID: one URI SAN, cA=false, critical key usage without CA bits, EKU
 * serverAuth+clientAuth. Like SPIRE the subject is C=US, O=SPIRE, plus CN=<first DNS name>.
 * notAfter is clamped to the issuer's notAfter so the chain never outlives its CA.
 */
export async function issueX509Svid(params: IssueX509SvidParams): Promise<Uint8Array> {
  const id = params.spiffeId
  if (!(id instanceof SpiffeId)) throw new SvidError('spiffeId must be a SpiffeId')
  if (id.path === '') {
    throw new SvidError('a leaf X509-SVID must have a SPIFFE ID with a non-root path')
  }
  const dnsNames = params.dnsNames ?? []
  for (const d of dnsNames) {
    if (d.length > 253 || !DNS_NAME.test(d)) {
      throw new SvidError(`invalid DNS name ${JSON.stringify(d.slice(0, 80))}`)
    }
  }
  const parent = await preparedLeafIssuer(params.issuer, id.trustDomain)
  const notAfter = earlier(parent.notAfter, params.notAfter)
  checkTimes(params.notBefore, notAfter)
  const pub = spki(params.subjectPublicKey)
  const rsa = params.subjectPublicKey.asymmetricKeyType === 'rsa'
  const subject = [
    der.tlv(0x31, der.seq(der.oid('2.5.4.6'), der.printable('US'))),
    der.tlv(0x31, der.seq(der.oid('2.5.4.10'), der.utf8String('SPIRE'))),
  ]
  if (dnsNames[0] !== undefined) {
    subject.push(der.tlv(0x31, der.seq(der.oid('2.5.4.3'), der.utf8String(dnsNames[0]))))
  }
  const ext = (oidDer: Uint8Array, critical: boolean, value: Uint8Array) =>
    critical ? der.seq(oidDer, der.boolTrue, der.octets(value)) : der.seq(oidDer, der.octets(value))
  const sans = [
    der.tlv(0x86, new Uint8Array(Buffer.from(id.toString(), 'utf8'))),
    ...dnsNames.map((d) => der.tlv(0x82, new Uint8Array(Buffer.from(d, 'ascii')))),
  ]
  const tbs = der.seq(
    LEAF.version,
    der.uint(new Uint8Array(Buffer.from(serialHex(params.serial), 'hex'))),
    parent.signatureAlgorithm,
    parent.issuerName,
    der.seq(der.time(params.notBefore), der.time(notAfter)),
    der.seq(...subject),
    pub,
    der.tlv(
      0xa3,
      der.seq(
        ext(LEAF.basicConstraints, true, LEAF.notCa),
        ext(LEAF.keyUsage, true, rsa ? LEAF.kuSignEncipher : LEAF.kuSign),
        ext(LEAF.extKeyUsage, false, LEAF.serverAndClientAuth),
        ext(LEAF.san, false, der.seq(...sans)),
        ext(LEAF.ski, false, der.octets(subjectKeyId(pub))),
        ext(LEAF.aki, false, der.seq(der.tlv(0x80, parent.keyId))),
      ),
    ),
  )
  const raw = await params.issuer.signer.sign(tbs)
  const signature = params.issuer.signer.keyType.startsWith('ec') ? der.p1363ToDer(raw) : raw
  // A hardware signer returning garbage should fail here, not in every relying party: check the
  // first signature of each signer (later ones come from the same, now proven, key path).
  if (!checkedSigners.has(params.issuer.signer)) {
    const hash = params.issuer.signer.keyType === 'ec-p384' ? 'sha384' : 'sha256'
    if (!cryptoVerify(hash, tbs, params.issuer.signer.publicKey, signature)) {
      throw new SvidError('the signer produced a signature that does not verify')
    }
    checkedSigners.add(params.issuer.signer)
  }
  return der.seq(tbs, parent.signatureAlgorithm, der.bits(signature))
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
  readonly issuerName: Uint8Array
  readonly keyId: Uint8Array
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
  const prepared: LeafIssuer = {
    issuerName: new Uint8Array(parent.cert.subjectName.toArrayBuffer()),
    keyId: new Uint8Array(Buffer.from(await issuerKeyId(parent.cert), 'hex')),
    notAfter: parent.notAfter,
    signatureAlgorithm: SIGNATURE_ALGORITHMS[issuer.signer.keyType],
  }
  if (leafIssuers.size > 16) leafIssuers.clear()
  leafIssuers.set(key, prepared)
  checkedIssuerSigners.set(issuer.signer, key)
  return prepared
}

const checkedIssuerSigners = new WeakMap<Signer, string>()
