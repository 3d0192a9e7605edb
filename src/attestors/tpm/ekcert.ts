/**
 * EK certificate trust: chain building from the EK certificate to a configured manufacturer CA,
 * with the TPM quirks that trip generic X.509 verifiers handled on purpose (critical SAN holding
 * a directoryName of TPM attributes, the EK EKU 2.23.133.8.1, RSA EKs with keyEncipherment only).
 * Signatures and issuer/subject matching go through OpenSSL (node:crypto); policy is ours.
 */
import { createHash, type X509Certificate as NodeX509 } from 'node:crypto'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { x509 } from '../../common/x509.js'
import { parsePemCertificates } from '../../spiffe/bundle.js'
import { nodeCertFromDer } from '../../spiffe/x509-cert.js'
import { TpmAttestationError } from './protocol.js'

export const OID = {
  ekCertificateEku: '2.23.133.8.1',
  anyEku: '2.5.29.37.0',
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  certificatePolicies: '2.5.29.32',
  subjectDirectoryAttributes: '2.5.29.9',
} as const

// Critical extensions we understand (and enforce, or that carry no constraint for us).
const LEAF_CRITICAL_OK = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.certificatePolicies,
  OID.subjectDirectoryAttributes,
])
const CA_CRITICAL_OK = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.certificatePolicies,
])
const MAX_DEPTH = 8
/**
 * Work bounds for one chain search (the input is unauthenticated): Go's x509 stops at 100
 * signature checks; candidate considerations are capped too, since path enumeration alone can be
 * exponential when many certificates name each other.
 */
export const MAX_SIGNATURE_CHECKS = 100
export const MAX_CANDIDATES = 2000
// Keys a CA may sign with here: bounded verification cost (OpenSSL accepts 16384-bit RSA keys with
// huge exponents, each verification then costing milliseconds).
const MAX_RSA_BITS = 4096
const CA_CURVES: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1', 'secp521r1'])

/** One certificate parsed twice: OpenSSL for signatures, @peculiar/x509 for extensions. */
export interface Cert {
  readonly der: Uint8Array
  readonly node: NodeX509
  readonly info: x509.X509Certificate
  /** sha256 hex of the DER certificate. */
  readonly sha256: string
  /** subject + sha256 of the SPKI: the same CA however often it was (cross-)certified. */
  readonly subjectKey: string
  /** Whether signatures by this certificate's key are cheap enough to check (see MAX_RSA_BITS). */
  readonly verifiable: boolean
}

function boundedKey(node: NodeX509): boolean {
  const k = node.publicKey
  const d = k.asymmetricKeyDetails
  if (k.asymmetricKeyType === 'rsa') {
    return (d?.modulusLength ?? 0) <= MAX_RSA_BITS && (d?.publicExponent ?? 0n) <= 0xffffffffn
  }
  return k.asymmetricKeyType === 'ec' && CA_CURVES.has(d?.namedCurve ?? '')
}

export function parseCert(der: Uint8Array, what: string): Cert {
  try {
    const node = nodeCertFromDer(der)
    const spki = node.publicKey.export({ type: 'spki', format: 'der' })
    return {
      der,
      node,
      info: new x509.X509Certificate(der),
      sha256: createHash('sha256').update(der).digest('hex'),
      subjectKey: `${node.subject}\n${createHash('sha256').update(spki).digest('hex')}`,
      verifiable: boundedKey(node),
    }
  } catch (err) {
    throw new TpmAttestationError('chain', `${what} does not parse as X.509`, undefined, err)
  }
}

/** Reads PEM (or single DER) certificates from a bundle file and/or every file of a directory. */
export function loadCaCertificates(
  bundle: string | undefined,
  dir: string | undefined,
): { certs: Cert[]; problems: string[] } {
  const certs: Cert[] = []
  const problems: string[] = []
  const readFile = (file: string, key: string): number => {
    let bytes: Buffer
    try {
      bytes = readFileSync(file)
    } catch (err) {
      problems.push(`${key}: cannot read ${file}: ${(err as Error).message}`)
      return 0
    }
    const text = bytes.toString('latin1')
    const ders = text.includes('-----BEGIN CERTIFICATE-----')
      ? parsePemCertificates(text)
      : bytes[0] === 0x30
        ? [new Uint8Array(bytes)]
        : []
    for (const der of ders) {
      try {
        certs.push(parseCert(der, file))
      } catch {
        problems.push(`${key}: ${file} holds a certificate that does not parse`)
      }
    }
    return ders.length
  }
  if (bundle !== undefined && readFile(bundle, 'ek_ca_bundle') === 0 && problems.length === 0) {
    problems.push(`ek_ca_bundle: ${bundle} holds no certificates`)
  }
  if (dir !== undefined) {
    let names: string[] = []
    try {
      names = readdirSync(dir).sort()
    } catch (err) {
      problems.push(`ek_ca_dir: cannot read ${dir}: ${(err as Error).message}`)
    }
    let found = 0
    for (const name of names) {
      const file = join(dir, name)
      if (name.startsWith('.') || !statSync(file).isFile()) continue
      found += readFile(file, 'ek_ca_dir')
    }
    if (found === 0 && problems.length === 0)
      problems.push(`ek_ca_dir: ${dir} holds no certificates`)
  }
  return { certs, problems }
}

function fail(message: string): never {
  throw new TpmAttestationError('chain', message)
}

function checkValidity(c: Cert, now: Date, what: string): void {
  if (now < c.info.notBefore || now > c.info.notAfter) {
    fail(`${what} (${c.info.subject}) is not valid at ${now.toISOString()}`)
  }
}

function checkCritical(c: Cert, ok: ReadonlySet<string>, what: string): void {
  for (const e of c.info.extensions) {
    if (e.critical && !ok.has(e.type)) fail(`${what} has an unknown critical extension ${e.type}`)
  }
}

/** A CA certificate may sign `below` CA certificates under it (pathLenConstraint). */
function checkCa(c: Cert, now: Date, below: number): void {
  const what = `CA certificate ${c.info.subject}`
  checkValidity(c, now, what)
  checkCritical(c, CA_CRITICAL_OK, what)
  const bc = c.info.getExtension(x509.BasicConstraintsExtension)
  if (!bc?.ca) fail(`${what} is not a CA (basicConstraints)`)
  if (bc.pathLength !== undefined && below > bc.pathLength) {
    fail(`${what} allows ${bc.pathLength} CAs under it, the chain has ${below}`)
  }
  const ku = c.info.getExtension(x509.KeyUsagesExtension)
  if (ku && !(ku.usages & x509.KeyUsageFlags.keyCertSign)) {
    fail(`${what} may not sign certificates (keyUsage)`)
  }
}

/** The EK certificate's own rules: not a CA, and an EKU, when present, that allows EK use. */
function checkLeaf(c: Cert, now: Date): void {
  checkValidity(c, now, 'the EK certificate')
  checkCritical(c, LEAF_CRITICAL_OK, 'the EK certificate')
  if (c.info.getExtension(x509.BasicConstraintsExtension)?.ca) {
    fail('the EK certificate is a CA certificate')
  }
  const eku = c.info.getExtension(x509.ExtendedKeyUsageExtension)
  if (eku) {
    const usages = eku.usages.map(String)
    if (!usages.includes(OID.ekCertificateEku) && !usages.includes(OID.anyEku)) {
      fail(`the EK certificate's EKU (${usages.join(',')}) lacks ${OID.ekCertificateEku}`)
    }
  }
  // No keyUsage check: RSA EKs carry keyEncipherment only, ECC EKs keyAgreement; both are fine.
}

/** Memoised, budgeted "does parent issue child": the signature checks are the expensive part. */
class IssuerChecks {
  private readonly memo = new Map<string, boolean>()
  signatures = 0
  candidates = 0

  issues(parent: Cert, child: Cert): boolean {
    if (++this.candidates > MAX_CANDIDATES) {
      fail(`the EK chain search gave up after ${MAX_CANDIDATES} candidate issuers`)
    }
    const key = `${parent.sha256}:${child.sha256}`
    const known = this.memo.get(key)
    if (known !== undefined) return known
    let ok = false
    try {
      // Name/AKI matching is cheap and needs no signature; only then is the signature checked.
      if (parent.verifiable && child.node.checkIssued(parent.node)) {
        if (++this.signatures > MAX_SIGNATURE_CHECKS) {
          fail(`the EK chain search gave up after ${MAX_SIGNATURE_CHECKS} signature checks`)
        }
        ok = child.node.verify(parent.node.publicKey)
      }
    } catch (err) {
      if (err instanceof TpmAttestationError) throw err
      ok = false
    }
    this.memo.set(key, ok)
    return ok
  }
}

export interface VerifiedChain {
  /** EK certificate first, the configured anchor last. */
  readonly path: readonly Cert[]
  /** The CA that signed the EK certificate (path[1]). */
  readonly issuer: Cert
}

/**
 * Builds and verifies a path from the EK certificate to one of `anchors` (configured certificates
 * are trusted as they are: roots, or intermediates an operator chose to trust), through
 * `intermediates` (untrusted, from the agent). Throws TpmAttestationError('chain').
 */
export function verifyEkChain(
  leaf: Cert,
  intermediates: readonly Cert[],
  anchors: readonly Cert[],
  now: Date,
): VerifiedChain {
  if (anchors.length === 0) fail('no EK CA certificates are configured')
  checkLeaf(leaf, now)
  const anchorHashes = new Set(anchors.map((a) => a.sha256))
  const isAnchor = (c: Cert) => anchorHashes.has(c.sha256)
  // Exact duplicates (and resent anchors) are dropped; anchors are tried first.
  const pool = [...anchors]
  const seen = new Set(anchorHashes)
  for (const c of intermediates) {
    if (!seen.has(c.sha256)) pool.push(c)
    seen.add(c.sha256)
  }
  const checks = new IssuerChecks()
  const walk = (path: Cert[]): Cert[] | undefined => {
    const top = path[path.length - 1]!
    if (path.length > 1 && isAnchor(top)) return path
    if (path.length > MAX_DEPTH) return undefined
    for (const cand of pool) {
      // A CA already on the path (same subject and key, whichever certificate) is a loop.
      if (path.some((p) => p.subjectKey === cand.subjectKey)) continue
      if (!checks.issues(cand, top)) continue
      try {
        // CAs strictly between this candidate and the leaf.
        checkCa(cand, now, path.length - 1)
      } catch (err) {
        if (isAnchor(cand)) throw err
        continue
      }
      const found = walk([...path, cand])
      if (found) return found
    }
    return undefined
  }
  const path = walk([leaf])
  if (!path) {
    fail(
      `the EK certificate (issuer ${leaf.info.issuer}) does not chain to a configured EK CA` +
        (intermediates.length ? ` through the ${intermediates.length} intermediate(s) sent` : ''),
    )
  }
  return { path, issuer: path[1]! }
}

/** SPKI DER of a certificate's key, normalised through OpenSSL (what sha256 EK hashes cover). */
export function certSpki(c: Cert): Uint8Array {
  return new Uint8Array(c.node.publicKey.export({ type: 'spki', format: 'der' }))
}

export interface TpmDeviceAttributes {
  readonly manufacturer?: string
  readonly model?: string
  readonly version?: string
}

/**
 * The TPM manufacturer, model and firmware version from the EK certificate's SAN directoryName
 * (TCG EK profile: tcg-at-tpmManufacturer/Model/Version), e.g. "id:00001014", "swtpm",
 * "id:20191023". Absent attributes are left out; a malformed SAN yields none.
 */
export function tpmDeviceAttributes(cert: x509.X509Certificate): TpmDeviceAttributes {
  let san: x509.SubjectAlternativeNameExtension | null
  try {
    san = cert.getExtension(x509.SubjectAlternativeNameExtension)
  } catch {
    return {}
  }
  const out: { manufacturer?: string; model?: string; version?: string } = {}
  for (const n of san?.names.items ?? []) {
    if (n.type !== 'dn') continue
    let name: x509.Name
    try {
      name = new x509.Name(n.value)
    } catch {
      continue
    }
    const first = (oid: string) => name.getField(oid)[0]
    const manufacturer = first(OID.tpmManufacturer)
    const model = first(OID.tpmModel)
    const version = first(OID.tpmVersion)
    if (manufacturer !== undefined) out.manufacturer ??= manufacturer
    if (model !== undefined) out.model ??= model
    if (version !== undefined) out.version ??= version
  }
  return out
}
