/**
 * Authorizers (go-spiffe's tlsconfig.Authorize*): decide, after the peer's SVID verified against
 * the bundle of its own trust domain, whether this peer may talk to us. Any function of the same
 * type is a custom authorizer.
 */
import { SpiffeId, TrustDomain } from './svid.js'

export type Authorizer = (peer: SpiffeId) => boolean

const asId = (id: SpiffeId | string): SpiffeId => (typeof id === 'string' ? SpiffeId.parse(id) : id)

/** Any peer with a valid SVID of a trusted trust domain. */
export function authorizeAny(): Authorizer {
  return () => true
}

/** Exactly this SPIFFE ID. */
export function authorizeID(id: SpiffeId | string): Authorizer {
  const want = asId(id)
  return (peer) => peer.equals(want)
}

/** Any of these SPIFFE IDs. */
export function authorizeOneOf(...ids: (SpiffeId | string)[]): Authorizer {
  const want = new Set(ids.map((i) => asId(i).toString()))
  return (peer) => want.has(peer.toString())
}

/** Any SPIFFE ID in this trust domain. */
export function authorizeMemberOf(td: TrustDomain | string): Authorizer {
  const want = typeof td === 'string' ? TrustDomain.parse(td) : td
  return (peer) => peer.memberOf(want)
}
