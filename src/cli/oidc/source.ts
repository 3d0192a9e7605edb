/**
 * Where the OIDC discovery provider gets the trust domain's JWT signing keys: an agent's Workload
 * API (FetchJWTBundles, the provider is then an ordinary workload) or the server's admin socket
 * (GET /v1/bundle, the provider then runs as the server's user or admin_socket_group). Either
 * way the result is reduced to public JWT-SVID keys; X.509 authorities never reach the JWKS.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto'
import { workloadClient } from '../../agent/workload-api/client.js'
import { SpiffeEdgeError } from '../../errors.js'
import { adminCall } from '../../server/admin-client.js'
import type { OidcSource } from './config.js'

export interface SigningKey {
  readonly kid: string
  /** The public JWK (kty, crv/x/y or n/e) plus kid, use "sig" and alg. */
  readonly jwk: Readonly<Record<string, string>>
  readonly alg: string
}

/** A bundle much larger than any real one is refused rather than parsed (bounded input). */
const MAX_BUNDLE_BYTES = 1 << 20
const MAX_KEYS = 256

function sourceError(message: string, remedy: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_OIDC_SOURCE', message, {
    remedy,
    ...(cause === undefined ? {} : { cause }),
  })
}

/** The JWS algorithm our server mints with for this key (see spiffe/signer.ts jwsAlgorithm). */
function algOf(jwk: JsonWebKey): string | undefined {
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256'
  if (jwk.kty === 'EC' && jwk.crv === 'P-384') return 'ES384'
  if (jwk.kty === 'EC' && jwk.crv === 'P-521') return 'ES512'
  if (jwk.kty === 'RSA') return 'RS256'
  return undefined
}

/**
 * JWT signing keys from a JWKS or SPIFFE bundle document: keys with `use` jwt-svid (SPIFFE
 * bundle) or no `use` (the Workload API's JWT bundle), each re-exported from a parsed public key,
 * so no private member or unexpected field of the input is ever served.
 */
export function signingKeys(doc: string): SigningKey[] {
  if (doc.length > MAX_BUNDLE_BYTES) {
    throw sourceError('the JWT bundle is larger than 1 MiB', 'check the source: no real bundle is')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(doc)
  } catch (err) {
    throw sourceError('the JWT bundle is not JSON', 'check the source socket', err)
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys))
    throw sourceError('the JWT bundle has no "keys" array', 'check the source')
  if (keys.length > MAX_KEYS)
    throw sourceError('the JWT bundle has too many keys', 'check the source')
  const out: SigningKey[] = []
  const seen = new Set<string>()
  for (const k of keys as Record<string, unknown>[]) {
    if (typeof k !== 'object' || k === null) continue
    if (k.use !== undefined && k.use !== 'jwt-svid') continue
    const kid = k.kid
    if (typeof kid !== 'string' || kid === '' || seen.has(kid)) continue
    let pub: JsonWebKey
    try {
      // Only the public members go in: a private `d` in the input must not make this a private key.
      const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicOnly } = k
      pub = createPublicKey({ key: publicOnly as JsonWebKey, format: 'jwk' }).export({
        format: 'jwk',
      })
    } catch {
      continue // a key we cannot use is skipped, as the SPIFFE bundle format says
    }
    const alg = algOf(pub)
    if (alg === undefined) continue
    seen.add(kid)
    const jwk: Record<string, string> = { kty: String(pub.kty), kid, use: 'sig', alg }
    for (const m of ['crv', 'x', 'y', 'n', 'e'] as const) {
      if (typeof pub[m] === 'string') jwk[m] = pub[m]
    }
    out.push({ kid, jwk, alg })
  }
  return out
}

export interface KeySource {
  /** The current signing keys; rejects with ERR_OIDC_SOURCE when the source cannot be read. */
  fetch(): Promise<SigningKey[]>
  close(): void
}

export function keySource(source: OidcSource, timeoutMs = 5000): KeySource {
  if (source.kind === 'workload_api') {
    const client = workloadClient(`unix://${source.socketPath}`, { timeoutMs })
    const key = `spiffe://${source.trustDomain}`
    return {
      async fetch() {
        let bundles: Map<string, string>
        try {
          bundles = await client.fetchJwtBundles()
        } catch (err) {
          throw sourceError(
            `cannot fetch JWT bundles from the Workload API at ${source.socketPath}: ${(err as Error).message}`,
            'is the agent running, and is there a registration entry for this process?',
            err,
          )
        }
        const doc = bundles.get(key) ?? bundles.get(source.trustDomain)
        if (doc === undefined) {
          throw sourceError(
            `the Workload API has no JWT bundle for ${key}`,
            'check oidc.workload_api.trust_domain',
          )
        }
        return signingKeys(doc)
      },
      close: () => client.close(),
    }
  }
  return {
    async fetch() {
      let r: Record<string, unknown>
      try {
        r = await adminCall(source.adminSocket, 'GET', '/v1/bundle?format=spiffe')
      } catch (err) {
        throw sourceError(
          `cannot fetch the bundle from the admin socket ${source.adminSocket}: ${(err as Error).message}`,
          'is the server running, and does this process run as its user or admin_socket_group?',
          err,
        )
      }
      const b = r.bundle
      return signingKeys(typeof b === 'string' ? b : JSON.stringify(b))
    },
    close() {},
  }
}
