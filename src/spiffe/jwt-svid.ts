import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose'
import type { JwtBundle } from './bundle.js'
import { SvidError } from './errors.js'
import { SpiffeId, type TrustDomain } from './id.js'
import { jwsAlgorithm, type Signer } from './signer.js'

/**
 * JWT-SVIDs per the JWT-SVID spec. Minting builds the JWS by hand and signs through a Signer
 * (the key may be in hardware); validation uses jose with a key picked by kid from the bundle
 * of the subject's trust domain.
 */

export interface MintJwtSvidParams {
  readonly spiffeId: SpiffeId
  /** At least one audience; one is strongly recommended by the spec. */
  readonly audience: readonly string[]
  readonly signer: Signer
  readonly kid: string
  readonly issuedAt: Date
  readonly expiresAt: Date
  /** Optional extra claims (e.g. iss, jti); they cannot override sub, aud, exp or iat. */
  readonly extraClaims?: Readonly<Record<string, unknown>>
}

export interface ValidateJwtSvidOptions {
  /** The audience the validator is; the token's aud must contain it. */
  readonly audience: string
  readonly bundles: (td: TrustDomain) => JwtBundle | undefined
  readonly now: Date
  /** Clock skew allowed on exp/nbf; default 60 s, the go-jose default go-spiffe and SPIRE use. */
  readonly leewaySeconds?: number
}

export interface ValidatedJwtSvid {
  readonly spiffeId: SpiffeId
  readonly claims: Record<string, unknown>
  readonly expiresAt: Date
}

/** The algorithms the JWT-SVID spec allows; anything else (none, HS*, EdDSA) is rejected. */
export const JWT_SVID_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
] as const

const RESERVED = new Set(['sub', 'aud', 'exp', 'iat'])

function b64url(bytes: Uint8Array | string): string {
  return Buffer.from(bytes).toString('base64url')
}

function seconds(d: Date): number {
  return Math.floor(d.getTime() / 1000)
}

export async function mintJwtSvid(params: MintJwtSvidParams): Promise<string> {
  const { spiffeId, audience, signer, kid } = params
  if (!(spiffeId instanceof SpiffeId)) throw new SvidError('spiffeId must be a SpiffeId')
  if (spiffeId.path === '') throw new SvidError('a JWT-SVID must have a non-root SPIFFE ID')
  if (audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '')) {
    throw new SvidError('a JWT-SVID needs at least one non-empty audience')
  }
  if (typeof kid !== 'string' || kid === '') {
    throw new SvidError('a JWT-SVID needs a key id (bundles key their JWT authorities by kid)')
  }
  const iat = seconds(params.issuedAt)
  const exp = seconds(params.expiresAt)
  if (!Number.isFinite(iat) || !Number.isFinite(exp) || exp <= iat) {
    throw new SvidError('expiresAt must be a valid date after issuedAt')
  }
  for (const name of Object.keys(params.extraClaims ?? {})) {
    if (RESERVED.has(name)) throw new SvidError(`extraClaims cannot set ${name}`)
  }
  // Only the headers the spec describes: alg, kid, typ.
  const header = { alg: jwsAlgorithm(signer.keyType), kid, typ: 'JWT' }
  // aud is always an array, as SPIRE emits it.
  const claims = { ...params.extraClaims, sub: spiffeId.toString(), aud: [...audience], exp, iat }
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
  const sig = await signer.sign(new TextEncoder().encode(input))
  return `${input}.${b64url(sig)}`
}

function fail(reason: string, cause?: unknown): never {
  throw new SvidError(`invalid JWT-SVID: ${reason}`, cause)
}

/** Maps jose's typed errors to reasons without leaking token contents. */
function joseReason(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return 'token has expired'
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    return `claim ${err.claim} failed validation (${err.reason})`
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature does not verify'
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed'
  if (err instanceof joseErrors.JOSEError) return `${err.code}`
  return 'token does not verify'
}

export async function validateJwtSvid(
  token: string,
  opts: ValidateJwtSvidOptions,
): Promise<ValidatedJwtSvid> {
  if (typeof token !== 'string' || token.split('.').length !== 3) {
    fail('not a JWS compact serialization')
  }
  let header: ReturnType<typeof decodeProtectedHeader>
  let unverified: ReturnType<typeof decodeJwt>
  try {
    header = decodeProtectedHeader(token)
    unverified = decodeJwt(token)
  } catch (err) {
    fail('malformed token', err)
  }
  const alg = header.alg
  if (typeof alg !== 'string' || !(JWT_SVID_ALGORITHMS as readonly string[]).includes(alg)) {
    fail(`algorithm ${JSON.stringify(alg)} is not allowed`)
  }
  // The spec makes kid optional, but bundles key JWT authorities by kid; go-spiffe and SPIRE
  // reject kid-less tokens too.
  if (typeof header.kid !== 'string' || header.kid === '') fail('token header missing key id')
  if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
    fail(`typ ${JSON.stringify(header.typ)} is not JWT or JOSE`)
  }
  if (typeof unverified.sub !== 'string') fail('sub claim is missing')
  let id: SpiffeId
  try {
    id = SpiffeId.parse(unverified.sub)
  } catch (err) {
    fail('sub is not a valid SPIFFE ID', err)
  }
  const bundle = opts.bundles(id.trustDomain)
  if (bundle === undefined || !bundle.trustDomain.equals(id.trustDomain)) {
    fail(`no JWT bundle for trust domain ${id.trustDomain}`)
  }
  const key = bundle.authorities.get(header.kid)
  if (key === undefined) fail(`key id ${JSON.stringify(header.kid)} is not in the bundle`)
  let payload: Record<string, unknown>
  try {
    const r = await jwtVerify(token, key, {
      algorithms: [alg],
      audience: opts.audience,
      currentDate: opts.now,
      clockTolerance: opts.leewaySeconds ?? 60,
      requiredClaims: ['sub', 'aud', 'exp'],
    })
    payload = r.payload as Record<string, unknown>
  } catch (err) {
    fail(joseReason(err), err)
  }
  // The verified payload is the one we looked the key up by, but check rather than assume.
  if (payload.sub !== unverified.sub) fail('sub changed between decode and verify')
  const exp = payload.exp
  if (typeof exp !== 'number') fail('exp claim is missing')
  return { spiffeId: id, claims: payload, expiresAt: new Date(exp * 1000) }
}
