/**
 * Local JWT-SVID validation with the core's validator (jose underneath: spec algorithms only,
 * kid required, audience and expiry checked) against the JWT bundle of the token's own trust
 * domain, from any bundle source.
 */
import { validateJwtSvid as coreValidate } from '../../../src/spiffe/jwt-svid.js'
import type { JwtBundleSource } from './bundle-source.js'
import { fromClaims, type JwtSvidClaims, type SpiffeId } from './svid.js'

export interface ValidatedJwt {
  readonly id: SpiffeId
  readonly claims: JwtSvidClaims
  readonly expiresAt: Date
}

export async function validateJwtSvid(
  token: string,
  audience: string,
  bundles: JwtBundleSource,
  opts: { now?: Date; leewaySeconds?: number } = {},
): Promise<ValidatedJwt> {
  const v = await coreValidate(token, {
    audience,
    bundles: (td) => bundles.getJwtBundleForTrustDomain(td),
    now: opts.now ?? new Date(),
    ...(opts.leewaySeconds === undefined ? {} : { leewaySeconds: opts.leewaySeconds }),
  })
  const parsed = fromClaims(v.claims, v.spiffeId.toString())
  return { id: v.spiffeId, claims: parsed.claims, expiresAt: v.expiresAt }
}
