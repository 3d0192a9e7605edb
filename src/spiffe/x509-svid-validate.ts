/**
 * X509-SVID validation per the X509-SVID spec: leaf rules, then our own small RFC 5280 path check
 * to an authority of the leaf's trust domain (node:crypto verifies signatures). SPIFFE trust is
 * per trust domain, which generic TLS verifiers cannot express.
 */
import type { X509Certificate as NodeX509 } from 'node:crypto'
import type { X509Bundle } from './bundle.js'
import { SvidError } from './errors.js'
import { SpiffeId, type TrustDomain } from './id.js'
import {
  basicConstraints,
  type CertInfo,
  isCa,
  KU,
  keyUsage,
  parseCert,
  uriSans,
} from './x509-cert.js'

export interface ValidatedX509Svid {
  readonly spiffeId: SpiffeId
  readonly leaf: CertInfo
  /** The verified path, leaf first, ending with the bundle authority it chains to. */
  readonly path: Uint8Array[]
  /** When every certificate of the path is valid: the latest notBefore, the earliest notAfter. */
  readonly validFrom: Date
  readonly validUntil: Date
}

const OID_BASIC_CONSTRAINTS = '2.5.29.19'
const OID_KEY_USAGE = '2.5.29.15'
const OID_EXT_KEY_USAGE = '2.5.29.37'
const OID_SAN = '2.5.29.17'
const OID_SKI = '2.5.29.14'
const OID_AKI = '2.5.29.35'
/** Critical extensions we process; RFC 5280 says reject any other critical extension. */
const UNDERSTOOD_CRITICAL = new Set([
  OID_BASIC_CONSTRAINTS,
  OID_KEY_USAGE,
  OID_EXT_KEY_USAGE,
  OID_SAN,
  OID_SKI,
  OID_AKI,
])

function checkCriticalExtensions(c: CertInfo, what: string): void {
  for (const ext of c.extensions) {
    if (ext.critical && !UNDERSTOOD_CRITICAL.has(ext.type)) {
      throw new SvidError(`${what} has an unsupported critical extension ${ext.type}`)
    }
  }
}

function checkValidAt(c: CertInfo, now: Date, what: string): void {
  if (now < c.notBefore) throw new SvidError(`${what} is not valid yet`)
  if (now > c.notAfter) throw new SvidError(`${what} has expired`)
}

/** The leaf's SPIFFE ID, enforcing the X509-SVID leaf rules (spec §5.2 and go-spiffe). */
function leafId(leaf: CertInfo): SpiffeId {
  const uris = uriSans(leaf)
  if (uris.length === 0) throw new SvidError('leaf certificate has no URI SAN')
  if (uris.length > 1) throw new SvidError('leaf certificate has more than one URI SAN')
  let id: SpiffeId
  try {
    id = SpiffeId.parse(uris[0]!)
  } catch (err) {
    throw new SvidError('leaf URI SAN is not a valid SPIFFE ID', err)
  }
  if (id.path === '') throw new SvidError('leaf SPIFFE ID must have a non-root path')
  if (basicConstraints(leaf)?.ca === true) throw new SvidError('leaf certificate is a CA')
  const ku = keyUsage(leaf)
  if (ku === undefined) throw new SvidError('leaf certificate has no key usage extension')
  if ((ku & KU.keyCertSign) !== 0) throw new SvidError('leaf certificate has keyCertSign')
  if ((ku & KU.cRLSign) !== 0) throw new SvidError('leaf certificate has cRLSign')
  if ((ku & KU.digitalSignature) === 0) {
    throw new SvidError('leaf certificate lacks digitalSignature')
  }
  return id
}

interface Parsed {
  der: Uint8Array
  p: CertInfo
  n: NodeX509
}

function issued(child: Parsed, parent: Parsed): boolean {
  // checkIssued matches names (and key ids); verify proves the signature.
  return child.n.checkIssued(parent.n) && child.n.verify(parent.n.publicKey)
}

/** CA rules for every certificate above the leaf; `below` counts the intermediates under it. */
function checkCa(c: Parsed, below: number, now: Date, what: string): void {
  if (!isCa(c.p)) throw new SvidError(`${what} is not a CA (cA=true with keyCertSign)`)
  checkCriticalExtensions(c.p, what)
  checkValidAt(c.p, now, what)
  const len = basicConstraints(c.p)?.pathLength
  if (len !== undefined && below > len) {
    throw new SvidError(`${what} pathLenConstraint ${len} is exceeded`)
  }
}

/** Longest chain accepted: a leaf and intermediates (an upstream CA nests a few levels). */
export const MAX_SVID_CHAIN = 16

/**
 * Validates an X509-SVID chain (leaf first, then intermediates) against the X.509 bundle of the
 * leaf's own trust domain: leaf rules, then a path of verified signatures to a bundle authority,
 * every certificate valid at `now`.
 */
export function validateX509Svid(
  chain: readonly Uint8Array[],
  bundles: (td: TrustDomain) => X509Bundle | undefined,
  now: Date,
): ValidatedX509Svid {
  if (chain.length === 0) throw new SvidError('the certificate chain is empty')
  // Before any parse: chains come from callers not yet authenticated (a node API request's agent
  // chain, up to 1 MiB), and each certificate costs a parse and, on the path, signature checks.
  if (chain.length > MAX_SVID_CHAIN)
    throw new SvidError(`the certificate chain has more than ${MAX_SVID_CHAIN} certificates`)
  const certs: Parsed[] = chain.map((der, i) => ({
    der,
    ...parseCert(der, i === 0 ? 'leaf certificate' : `chain certificate ${i}`),
  }))
  const leaf = certs[0]!
  const id = leafId(leaf.p)
  checkCriticalExtensions(leaf.p, 'leaf certificate')
  checkValidAt(leaf.p, now, 'leaf certificate')
  // go-spiffe's ParseRaw demands every certificate after the leaf be a CA.
  for (let i = 1; i < certs.length; i++) {
    if (!isCa(certs[i]!.p)) throw new SvidError(`chain certificate ${i} is not a CA`)
  }
  const bundle = bundles(id.trustDomain)
  if (bundle === undefined || !bundle.trustDomain.equals(id.trustDomain)) {
    throw new SvidError(`no X.509 bundle for trust domain ${id.trustDomain}`)
  }
  const anchors: Parsed[] = []
  for (const der of bundle.authorities) {
    try {
      anchors.push({ der, ...parseCert(der, 'bundle authority') })
    } catch {
      // One unparseable authority must not make the whole bundle useless.
    }
  }
  const pool = certs.slice(1)
  const path: Parsed[] = [leaf]
  let current = leaf
  // Each step consumes an intermediate, so this terminates within chain.length steps.
  for (;;) {
    const below = path.length - 1
    const anchor = anchors.find((a) => issued(current, a))
    if (anchor !== undefined) {
      checkCa(anchor, below, now, 'bundle authority')
      path.push(anchor)
      const from = Math.max(...path.map((c) => c.p.notBefore.getTime()))
      const until = Math.min(...path.map((c) => c.p.notAfter.getTime()))
      return {
        spiffeId: id,
        leaf: leaf.p,
        path: path.map((c) => c.der),
        validFrom: new Date(from),
        validUntil: new Date(until),
      }
    }
    const idx = pool.findIndex((c) => issued(current, c))
    if (idx < 0) {
      throw new SvidError(`no path from the leaf to an authority of trust domain ${id.trustDomain}`)
    }
    const next = pool.splice(idx, 1)[0]!
    checkCa(next, below, now, `intermediate certificate ${chain.indexOf(next.der)}`)
    path.push(next)
    current = next
  }
}
