/**
 * The values the sources hand out: X509-SVIDs with their keys, X.509 and JWT bundles keyed by
 * trust domain, JWT-SVIDs with typed claims. Parsed from Workload API messages with the checks
 * go-spiffe's ParseRaw makes (chain parses, the key is PKCS#8 and belongs to the leaf, the leaf
 * names the SPIFFE ID the message says).
 */
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'
import { decodeJwt } from 'jose'
import { WorkloadProtocolError } from '../../../src/agent/workload-api/errors.js'
import { certificateToPem, JwtBundle, X509Bundle } from '../../../src/spiffe/bundle.js'
import { readTlv } from '../../../src/spiffe/der.js'
import { SpiffeId, TrustDomain } from '../../../src/spiffe/id.js'
import type { JwtSvidMsg, X509SvidMsg } from './workload/proto.js'

export { JwtBundle, SpiffeId, TrustDomain, X509Bundle }

export interface X509Svid {
  readonly id: SpiffeId
  /** DER certificates, leaf first. */
  readonly certificates: readonly Uint8Array[]
  readonly privateKey: KeyObject
  /** The chain as PEM, leaf first (what node:tls takes as `cert`). */
  readonly certificatesPem: string
  /** PKCS#8 PEM (what node:tls takes as `key`). */
  readonly privateKeyPem: string
  readonly hint: string
  readonly expiresAt: Date
  /** Hex serial of the leaf. */
  readonly serialNumber: string
}

/** The claims of a JWT-SVID: the spec's registered ones typed, any others as JSON values. */
export interface JwtSvidClaims {
  readonly sub: string
  readonly aud: readonly string[]
  readonly exp: number
  readonly iat?: number
  readonly [claim: string]: unknown
}

export interface JwtSvid {
  readonly id: SpiffeId
  readonly token: string
  readonly audience: readonly string[]
  readonly expiresAt: Date
  readonly hint: string
  readonly claims: JwtSvidClaims
}

/** A bundle document (or JWKS) larger than this, or with more keys, is refused. */
export const MAX_BUNDLE_BYTES = 1 << 20
export const MAX_BUNDLE_KEYS = 1000

const bytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)

/** Concatenated DER certificates → one array per certificate. */
export function splitDer(buf: Uint8Array, what: string): Uint8Array[] {
  const out: Uint8Array[] = []
  let off = 0
  try {
    while (off < buf.length) {
      const t = readTlv(buf, off, what)
      out.push(buf.slice(off, t.end))
      off = t.end
    }
  } catch (err) {
    throw new WorkloadProtocolError(`${what} is not concatenated DER: ${(err as Error).message}`)
  }
  return out
}

/** The one URI SAN of a certificate (Node's parse: no ASN.1 library on the hot path). */
export function uriSanOf(cert: X509Certificate | { subjectaltname?: string }): string[] {
  const san = cert instanceof X509Certificate ? cert.subjectAltName : cert.subjectaltname
  if (san === undefined) return []
  // Node escapes a comma inside a name as a JSON string, so a plain split cannot be fooled.
  return san
    .split(', ')
    .filter((p) => p.startsWith('URI:'))
    .map((p) => p.slice(4))
}

export function parseX509Svid(m: X509SvidMsg): X509Svid {
  const what = `SVID ${m.spiffeId}`
  let id: SpiffeId
  try {
    id = SpiffeId.parse(m.spiffeId)
  } catch (err) {
    throw new WorkloadProtocolError(`${what}: ${(err as Error).message}`)
  }
  const certificates = splitDer(m.x509Svid, `x509_svid of ${m.spiffeId}`)
  const leafDer = certificates[0]
  if (leafDer === undefined) throw new WorkloadProtocolError(`${what} has no certificate`)
  let leaf: X509Certificate
  let privateKey: KeyObject
  try {
    leaf = new X509Certificate(leafDer)
    privateKey = createPrivateKey({ key: bytes(m.x509SvidKey), format: 'der', type: 'pkcs8' })
  } catch (err) {
    throw new WorkloadProtocolError(`${what}: ${(err as Error).message}`)
  }
  const leafSpki = leaf.publicKey.export({ type: 'spki', format: 'der' })
  if (!leafSpki.equals(createPublicKey(privateKey).export({ type: 'spki', format: 'der' }))) {
    throw new WorkloadProtocolError(`${what}: the private key does not match the leaf`)
  }
  const uris = uriSanOf(leaf)
  if (uris.length !== 1 || uris[0] !== id.toString()) {
    throw new WorkloadProtocolError(`${what}: the leaf names ${uris.join(',') || 'no URI SAN'}`)
  }
  return {
    id,
    certificates,
    privateKey,
    certificatesPem: certificates.map(certificateToPem).join(''),
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    hint: m.hint,
    expiresAt: new Date(leaf.validTo),
    serialNumber: leaf.serialNumber,
  }
}

/** A Workload API bundle map ('spiffe://td' or 'td' → DER) → X509Bundles by trust domain name. */
export function parseX509Bundles(
  map: Record<string, Uint8Array>,
  into = new Map<string, X509Bundle>(),
): Map<string, X509Bundle> {
  for (const [key, der] of Object.entries(map)) {
    const td = parseTdKey(key)
    into.set(td.name, new X509Bundle(td, splitDer(der, `bundle of ${key}`)))
  }
  return into
}

function parseTdKey(key: string): TrustDomain {
  try {
    return TrustDomain.parse(key)
  } catch (err) {
    throw new WorkloadProtocolError(`bundle key ${JSON.stringify(key)}: ${(err as Error).message}`)
  }
}

/**
 * A JWKS (or SPIFFE bundle document) → the JWT authorities: keys with a kid whose `use` is
 * absent or jwt-svid. Other keys (x509-svid, unknown kty) are skipped as the bundle spec says.
 */
export function parseJwtBundle(td: TrustDomain, doc: Uint8Array): JwtBundle {
  if (doc.length > MAX_BUNDLE_BYTES) {
    throw new WorkloadProtocolError(`JWT bundle of ${td} exceeds ${MAX_BUNDLE_BYTES} bytes`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(new TextDecoder().decode(doc))
  } catch (err) {
    throw new WorkloadProtocolError(`JWT bundle of ${td} is not JSON: ${(err as Error).message}`)
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys)) throw new WorkloadProtocolError(`JWT bundle of ${td} has no keys array`)
  if (keys.length > MAX_BUNDLE_KEYS) {
    throw new WorkloadProtocolError(`JWT bundle of ${td} has over ${MAX_BUNDLE_KEYS} keys`)
  }
  const authorities = new Map<string, KeyObject>()
  for (const k of keys as unknown[]) {
    if (typeof k !== 'object' || k === null) continue
    const jwk = k as Record<string, unknown>
    if (jwk.use !== undefined && jwk.use !== 'jwt-svid') continue
    if (typeof jwk.kid !== 'string' || jwk.kid === '') continue
    if (jwk.kty !== 'EC' && jwk.kty !== 'RSA') continue
    try {
      const { d: _private, ...pub } = jwk
      authorities.set(jwk.kid, createPublicKey({ key: pub, format: 'jwk' }))
    } catch (err) {
      throw new WorkloadProtocolError(
        `JWT bundle of ${td}: key ${jwk.kid}: ${(err as Error).message}`,
      )
    }
  }
  return new JwtBundle(td, authorities)
}

export function parseJwtBundles(map: Record<string, Uint8Array>): Map<string, JwtBundle> {
  const out = new Map<string, JwtBundle>()
  for (const [key, doc] of Object.entries(map)) {
    const td = parseTdKey(key)
    out.set(td.name, parseJwtBundle(td, doc))
  }
  return out
}

/** A JWT-SVID from the agent: decoded (not verified: it came from the agent over its socket). */
export function parseJwtSvid(m: JwtSvidMsg): JwtSvid {
  let claims: Record<string, unknown>
  try {
    claims = decodeJwt(m.svid)
  } catch (err) {
    throw new WorkloadProtocolError(`JWT-SVID for ${m.spiffeId}: ${(err as Error).message}`)
  }
  return { ...fromClaims(claims, m.spiffeId), token: m.svid, hint: m.hint }
}

/** Typed claims from a decoded payload; refuses tokens without the registered claims. */
export function fromClaims(
  claims: Record<string, unknown>,
  expectSub?: string,
): { id: SpiffeId; claims: JwtSvidClaims; audience: string[]; expiresAt: Date } {
  const { sub, exp } = claims
  const aud = typeof claims.aud === 'string' ? [claims.aud] : claims.aud
  if (typeof sub !== 'string' || (expectSub !== undefined && sub !== expectSub)) {
    throw new WorkloadProtocolError(`JWT-SVID sub ${String(sub)} is not ${expectSub}`)
  }
  if (!Array.isArray(aud) || !aud.every((a) => typeof a === 'string')) {
    throw new WorkloadProtocolError('JWT-SVID aud is not a string array')
  }
  if (typeof exp !== 'number') throw new WorkloadProtocolError('JWT-SVID has no exp')
  let id: SpiffeId
  try {
    id = SpiffeId.parse(sub)
  } catch (err) {
    throw new WorkloadProtocolError(`JWT-SVID sub: ${(err as Error).message}`)
  }
  const typed: JwtSvidClaims = { ...claims, sub, aud: [...aud], exp }
  return { id, claims: typed, audience: [...aud], expiresAt: new Date(exp * 1000) }
}
