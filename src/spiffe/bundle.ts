import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { spkiFromPublicJwk, spkiOf } from './der.js'
import { BundleError } from './errors.js'
import type { TrustDomain } from './id.js'
import { nodeCertFromDer, readCert } from './x509-cert.js'

/**
 * Trust bundles: the X.509 and JWT authorities of one trust domain, and the SPIFFE bundle
 * document (a JWK Set with spiffe_sequence and spiffe_refresh_hint) that carries them. A bundle
 * is always bound to its trust domain; bundles of different trust domains are never merged.
 */

/** The X.509 authorities (DER CA certificates) of one trust domain. */
export class X509Bundle {
  readonly trustDomain: TrustDomain
  readonly authorities: Uint8Array[]

  constructor(trustDomain: TrustDomain, authorities: readonly Uint8Array[]) {
    this.trustDomain = trustDomain
    this.authorities = [...authorities]
  }
}

/** The JWT-SVID signing keys of one trust domain, by key id. */
export class JwtBundle {
  readonly trustDomain: TrustDomain
  readonly authorities: Map<string, KeyObject>

  constructor(trustDomain: TrustDomain, authorities: ReadonlyMap<string, KeyObject>) {
    this.trustDomain = trustDomain
    this.authorities = new Map(authorities)
  }
}

export interface TrustBundleInit {
  readonly trustDomain: TrustDomain
  readonly x509Authorities?: readonly Uint8Array[]
  readonly jwtAuthorities?: ReadonlyMap<string, KeyObject>
  /** spiffe_sequence: bumped on every content change; default 0. */
  readonly sequence?: number
  /** spiffe_refresh_hint in seconds. */
  readonly refreshHintSeconds?: number
}

export interface FromSpiffeJsonOptions {
  /**
   * Reject the bundle when a key has a `use` or `kty` we do not know. Off by default: the SPIFFE
   * bundle format says such a key is ignored, not the whole bundle (a peer may publish keys for
   * SVID types or algorithms this build does not have yet).
   */
  readonly strict?: boolean
  /** @deprecated unknown uses are ignored by default now; kept so callers still compile. */
  readonly ignoreUnknownUse?: boolean
}

const X509_USE = 'x509-svid'
const JWT_USE = 'jwt-svid'
/** Spec-defined uses we do not serve but must not choke on (WIT-SVID, incubating). */
const KNOWN_OTHER_USES = new Set(['wit-svid'])
/** Key types this build can use; keys of other types are skipped (see FromSpiffeJsonOptions). */
const KNOWN_KTY = new Set(['EC', 'RSA'])
const STD_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** The public JWK members only (never `d` or other private parts). */
function publicJwk(key: KeyObject): Record<string, unknown> {
  const jwk = key.export({ format: 'jwk' })
  if (jwk.kty === 'EC') return { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y }
  if (jwk.kty === 'RSA') return { kty: 'RSA', n: jwk.n, e: jwk.e }
  throw new BundleError(`unsupported key type ${String(jwk.kty)} for a bundle`)
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}

function checkSequence(v: number, what: string): void {
  if (!isNonNegInt(v)) throw new BundleError(`${what} must be a non-negative integer`)
}

/** Refuses a JWK carrying private key material (a bundle publishes public keys only). */
function refusePrivate(jwk: Record<string, unknown>, where: string): void {
  if ('d' in jwk || 'p' in jwk || 'q' in jwk || 'k' in jwk) {
    throw new BundleError(`${where} contains private key material`)
  }
}

/** A JWK's key members as a public KeyObject, refusing private key material. */
function importJwk(jwk: Record<string, unknown>, where: string): KeyObject {
  refusePrivate(jwk, where)
  if (jwk.kty !== 'EC' && jwk.kty !== 'RSA') {
    throw new BundleError(`${where} has unsupported kty ${JSON.stringify(jwk.kty)}`)
  }
  const members =
    jwk.kty === 'EC'
      ? { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y }
      : { kty: 'RSA', n: jwk.n, e: jwk.e }
  try {
    return createPublicKey({ key: members as JsonWebKey, format: 'jwk' })
  } catch (err) {
    throw new BundleError(`${where} is not a valid ${jwk.kty} public key`, err)
  }
}

/** One DER certificate as a PEM CERTIFICATE block (64-column base64, trailing newline). */
export function certificateToPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64')
  const lines = b64.match(/.{1,64}/g) ?? []
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`
}

/** DER certificates from PEM text (every CERTIFICATE block, in order). */
export function parsePemCertificates(pem: string): Uint8Array[] {
  const out: Uint8Array[] = []
  const re = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/g
  for (const m of pem.matchAll(re)) {
    out.push(new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')))
  }
  return out
}

export class TrustBundle {
  readonly trustDomain: TrustDomain
  readonly x509Authorities: readonly Uint8Array[]
  readonly jwtAuthorities: ReadonlyMap<string, KeyObject>
  readonly sequence: number
  readonly refreshHintSeconds?: number
  /**
   * The document, made once: a bundle never changes after construction, and the server sends it
   * with every attestation and GetBundle (each X.509 authority parsed again cost ~0.3 ms).
   */
  #json: string | undefined

  constructor(init: TrustBundleInit) {
    this.trustDomain = init.trustDomain
    const x509: Uint8Array[] = []
    for (const der of init.x509Authorities ?? []) {
      // Duplicates add nothing and would make equals() order-sensitive in odd ways. Copied: the
      // caller's buffers must not change the bundle (or its memoised document) later.
      if (!x509.some((a) => sameBytes(a, der))) x509.push(new Uint8Array(der))
    }
    this.x509Authorities = x509
    const jwt = new Map<string, KeyObject>()
    for (const [kid, key] of init.jwtAuthorities ?? []) {
      if (kid === '') throw new BundleError('a JWT authority needs a non-empty key id')
      // Never let a private key slip into a document we publish.
      jwt.set(kid, key.type === 'private' ? createPublicKey(key) : key)
    }
    this.jwtAuthorities = jwt
    this.sequence = init.sequence ?? 0
    checkSequence(this.sequence, 'sequence')
    if (init.refreshHintSeconds !== undefined) {
      checkSequence(init.refreshHintSeconds, 'refresh hint')
      this.refreshHintSeconds = init.refreshHintSeconds
    }
  }

  x509Bundle(): X509Bundle {
    return new X509Bundle(this.trustDomain, this.x509Authorities)
  }

  jwtBundle(): JwtBundle {
    return new JwtBundle(this.trustDomain, this.jwtAuthorities)
  }

  /** The SPIFFE bundle document (JWK Set) for this trust domain. */
  toSpiffeJson(): string {
    this.#json ??= this.makeSpiffeJson()
    return this.#json
  }

  private makeSpiffeJson(): string {
    const keys: Record<string, unknown>[] = []
    for (const der of this.x509Authorities) {
      const cert = nodeCertFromDer(der)
      keys.push({
        ...publicJwk(cert.publicKey),
        use: X509_USE,
        x5c: [Buffer.from(der).toString('base64')],
      })
    }
    for (const [kid, key] of this.jwtAuthorities) {
      keys.push({ ...publicJwk(key), kid, use: JWT_USE })
    }
    const doc: Record<string, unknown> = { spiffe_sequence: this.sequence }
    if (this.refreshHintSeconds !== undefined) doc.spiffe_refresh_hint = this.refreshHintSeconds
    doc.keys = keys
    return JSON.stringify(doc)
  }

  /** All X.509 authorities as concatenated PEM (for openssl, TLS CA files). */
  toPem(): string {
    return this.x509Authorities.map(certificateToPem).join('')
  }

  equals(o: TrustBundle | undefined | null): boolean {
    if (!(o instanceof TrustBundle)) return false
    if (!o.trustDomain.equals(this.trustDomain)) return false
    if (o.sequence !== this.sequence || o.refreshHintSeconds !== this.refreshHintSeconds) {
      return false
    }
    if (o.x509Authorities.length !== this.x509Authorities.length) return false
    if (!this.x509Authorities.every((a) => o.x509Authorities.some((b) => sameBytes(a, b)))) {
      return false
    }
    if (o.jwtAuthorities.size !== this.jwtAuthorities.size) return false
    for (const [kid, key] of this.jwtAuthorities) {
      const other = o.jwtAuthorities.get(kid)
      if (other === undefined || !sameBytes(spkiOf(key), spkiOf(other))) return false
    }
    return true
  }

  /**
   * Parses a SPIFFE bundle document for `trustDomain`, strictly: x509-svid keys need exactly one
   * x5c certificate matching the JWK and no kid; jwt-svid keys need a unique kid.
   */
  static fromSpiffeJson(
    trustDomain: TrustDomain,
    json: string | Uint8Array,
    opts: FromSpiffeJsonOptions = {},
  ): TrustBundle {
    let doc: unknown
    try {
      doc = JSON.parse(typeof json === 'string' ? json : new TextDecoder().decode(json))
    } catch (err) {
      throw new BundleError('not valid JSON', err)
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
      throw new BundleError('the document is not a JSON object')
    }
    const d = doc as Record<string, unknown>
    if (!Array.isArray(d.keys)) throw new BundleError('"keys" must be present and an array')
    let sequence = 0
    if (d.spiffe_sequence !== undefined) {
      if (!isNonNegInt(d.spiffe_sequence)) {
        throw new BundleError('spiffe_sequence must be a non-negative integer')
      }
      sequence = d.spiffe_sequence
    }
    let refreshHintSeconds: number | undefined
    if (d.spiffe_refresh_hint !== undefined) {
      if (!isNonNegInt(d.spiffe_refresh_hint)) {
        throw new BundleError('spiffe_refresh_hint must be a non-negative integer (seconds)')
      }
      refreshHintSeconds = d.spiffe_refresh_hint
    }
    const x509Authorities: Uint8Array[] = []
    const jwtAuthorities = new Map<string, KeyObject>()
    d.keys.forEach((k: unknown, i: number) => {
      const where = `keys[${i}]`
      if (typeof k !== 'object' || k === null || Array.isArray(k)) {
        throw new BundleError(`${where} is not a JWK object`)
      }
      const jwk = k as Record<string, unknown>
      if (typeof jwk.kty !== 'string') throw new BundleError(`${where} has no kty`)
      if (typeof jwk.use !== 'string') throw new BundleError(`${where} has no use`)
      const knownUse = jwk.use === X509_USE || jwk.use === JWT_USE
      if (!knownUse || !KNOWN_KTY.has(jwk.kty)) {
        if (opts.strict && !KNOWN_OTHER_USES.has(jwk.use)) {
          throw new BundleError(
            knownUse
              ? `${where} has unsupported kty ${JSON.stringify(jwk.kty)}`
              : `${where} has unknown use ${JSON.stringify(jwk.use)}`,
          )
        }
        return // ignored, as the spec says: the other keys still count
      }
      if (jwk.use === X509_USE) {
        x509Authorities.push(parseX509Key(jwk, where))
      } else if (jwk.use === JWT_USE) {
        const { kid, key } = parseJwtKey(jwk, where)
        if (jwtAuthorities.has(kid)) {
          throw new BundleError(`${where} repeats key id ${JSON.stringify(kid)}`)
        }
        jwtAuthorities.set(kid, key)
      }
    })
    const init: TrustBundleInit =
      refreshHintSeconds === undefined
        ? { trustDomain, x509Authorities, jwtAuthorities, sequence }
        : { trustDomain, x509Authorities, jwtAuthorities, sequence, refreshHintSeconds }
    return new TrustBundle(init)
  }
}

function parseX509Key(jwk: Record<string, unknown>, where: string): Uint8Array {
  if (jwk.kid !== undefined) throw new BundleError(`${where}: an x509-svid key must not set kid`)
  const x5c = jwk.x5c
  if (!Array.isArray(x5c) || x5c.length === 0) {
    throw new BundleError(`${where}: an x509-svid key needs x5c`)
  }
  if (x5c.length !== 1) {
    throw new BundleError(`${where}: an x509-svid key must hold exactly one x5c certificate`)
  }
  const b64 = x5c[0]
  if (typeof b64 !== 'string' || b64 === '' || !STD_BASE64.test(b64)) {
    throw new BundleError(`${where}: x5c[0] is not base64`)
  }
  const der = new Uint8Array(Buffer.from(b64, 'base64'))
  let spki: Uint8Array
  try {
    spki = readCert(der).spki
    // OpenSSL reads DER given as bytes as PEM first (nodeCertFromDer): only bytes with a PEM
    // marker can be read as another certificate, so only those pay for the OpenSSL parse.
    if (Buffer.from(der.buffer, der.byteOffset, der.length).includes('-----BEGIN')) {
      nodeCertFromDer(der)
    }
  } catch (err) {
    throw new BundleError(`${where}: x5c[0] is not a DER certificate`, err)
  }
  // The JWK members must describe the certificate's key, or consumers could disagree. Compared as
  // SPKI bytes built from the members (no OpenSSL import and exports: ~0.5 ms per key).
  refusePrivate(jwk, where)
  const fromJwk = spkiFromPublicJwk(jwk)
  if (!fromJwk || !sameBytes(fromJwk, spki)) {
    throw new BundleError(`${where}: the JWK key does not match its x5c certificate`)
  }
  return der
}

function parseJwtKey(jwk: Record<string, unknown>, where: string): { kid: string; key: KeyObject } {
  if (typeof jwk.kid !== 'string' || jwk.kid === '') {
    throw new BundleError(`${where}: a jwt-svid key needs a kid`)
  }
  return { kid: jwk.kid, key: importJwk(jwk, where) }
}
