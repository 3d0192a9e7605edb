/**
 * RS256 JWT verification for the token-based cloud attestors (gcp_iit, azure_msi) with jose: keys
 * from a JWKS file or URL (fetched with a deadline and a size cap, cached), issuer, audience and
 * time checks, and jose's failures mapped to the attestors' stable refusal reasons.
 */
import { readFileSync } from 'node:fs'
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  type JSONWebKeySet,
  type JWTPayload,
  errors as joseErrors,
  jwtVerify,
} from 'jose'
import { CloudAttestationError } from './common.js'

/** A JWT is a few KiB; anything far bigger is refused before it is decoded. */
export const MAX_TOKEN = 16 * 1024
/** JWKS documents are small (Google's and Microsoft's are ~2-8 KiB). */
const MAX_JWKS = 256 * 1024
const JWKS_TIMEOUT_MS = 5000

export type KeySource = { readonly file: string } | { readonly url: string }

export type KeyResolver = Parameters<typeof jwtVerify>[1]

/** Reads a JWKS at most MAX_JWKS long: jose's own fetch would read any size. */
const cappedFetch = async (
  url: string,
  options: { headers: Headers; method: 'GET'; redirect: 'manual'; signal: AbortSignal },
): Promise<Response> => {
  const res = await fetch(url, options)
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of res.body ?? []) {
    size += chunk.length
    if (size > MAX_JWKS) {
      await res.body?.cancel().catch(() => undefined)
      throw new Error(`JWKS at ${url} is over ${MAX_JWKS} bytes`)
    }
    chunks.push(chunk)
  }
  return new Response(Buffer.concat(chunks), { status: res.status, headers: res.headers })
}

/** Builds the key resolver once at startup; a file is read (and must parse) now, fail closed. */
export function keyResolver(source: KeySource): KeyResolver {
  if ('file' in source) {
    const jwks = JSON.parse(readFileSync(source.file, 'utf8')) as JSONWebKeySet
    if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
      throw new Error(`${source.file} holds no keys`)
    }
    return createLocalJWKSet(jwks)
  }
  return createRemoteJWKSet(new URL(source.url), {
    timeoutDuration: JWKS_TIMEOUT_MS,
    // Providers rotate keys daily at most; refetch at most every 30 s for an unknown kid.
    cooldownDuration: 30_000,
    cacheMaxAge: 3600_000,
    [customFetch]: cappedFetch,
  })
}

export interface JwtChecks {
  readonly issuer: string | readonly string[]
  readonly audience: string | readonly string[]
  readonly now: Date
  /** Allowed clock difference, seconds. */
  readonly clockToleranceSec?: number
}

/** Verifies signature (RS256 only), iss, aud, exp, nbf, iat; refusals carry a stable reason. */
export async function verifyJwt(
  attestor: string,
  token: unknown,
  keys: KeyResolver,
  checks: JwtChecks,
): Promise<JWTPayload> {
  if (typeof token !== 'string' || token.length === 0) {
    throw new CloudAttestationError(attestor, 'payload', 'the token must be a non-empty string')
  }
  if (token.length > MAX_TOKEN) {
    throw new CloudAttestationError(attestor, 'payload', `the token is over ${MAX_TOKEN} bytes`)
  }
  try {
    const { payload } = await jwtVerify(token, keys, {
      algorithms: ['RS256'],
      issuer: checks.issuer as string | string[],
      audience: checks.audience as string | string[],
      currentDate: checks.now,
      clockTolerance: checks.clockToleranceSec ?? 30,
      requiredClaims: ['exp', 'iat'],
    })
    if (
      typeof payload.iat === 'number' &&
      payload.iat > checks.now.getTime() / 1000 + (checks.clockToleranceSec ?? 30)
    ) {
      throw new CloudAttestationError(attestor, 'expired', 'the token was issued in the future')
    }
    return payload
  } catch (err) {
    if (err instanceof CloudAttestationError) throw err
    if (err instanceof joseErrors.JWTExpired) {
      throw new CloudAttestationError(attestor, 'expired', 'the token has expired', err)
    }
    if (err instanceof joseErrors.JWTClaimValidationFailed) {
      const reason =
        err.claim === 'aud'
          ? 'audience'
          : err.claim === 'iss'
            ? 'issuer'
            : err.claim === 'nbf' || err.claim === 'iat'
              ? 'expired'
              : 'claims'
      throw new CloudAttestationError(attestor, reason, `claim '${err.claim}': ${err.message}`, err)
    }
    if (
      err instanceof joseErrors.JWSSignatureVerificationFailed ||
      err instanceof joseErrors.JWKSNoMatchingKey ||
      err instanceof joseErrors.JOSEAlgNotAllowed
    ) {
      throw new CloudAttestationError(attestor, 'signature', err.message, err)
    }
    if (err instanceof joseErrors.JWKSTimeout || err instanceof joseErrors.JWKSInvalid) {
      throw new CloudAttestationError(
        attestor,
        'signature',
        `the signing keys could not be read: ${err.message}`,
        err,
      )
    }
    if (err instanceof joseErrors.JOSEError) {
      throw new CloudAttestationError(
        attestor,
        'payload',
        `the token is malformed: ${err.message}`,
        err,
      )
    }
    throw new CloudAttestationError(
      attestor,
      'signature',
      `the signing keys could not be read: ${(err as Error).message}`,
      err,
    )
  }
}
