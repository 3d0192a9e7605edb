/**
 * The seam between the agent's cache (which knows identities and bundles) and the Workload API
 * endpoint (which knows sockets, callers and the SPIFFE wire rules). The endpoint never talks to
 * the server: everything it serves comes from a WorkloadSource, so it never blocks on the network.
 */
import type { Selector } from '../../attestors/types.js'
import type { JwtBundle } from '../../spiffe/bundle.js'
import type { TrustDomain } from '../../spiffe/id.js'

import type { ProcFiles } from './proc.js'

export type { Selector }

export interface WorkloadX509Svid {
  readonly spiffeId: string
  /** DER certificates, leaf first. */
  readonly chain: readonly Uint8Array[]
  /** Unencrypted PKCS#8 DER of the SVID's private key (generated on the agent, never sent anywhere). */
  readonly privateKey: Uint8Array
  readonly hint: string
  /** The entry it was issued for (stable order: sorted by entry id, as SPIRE sorts). */
  readonly entryId: string
}

export interface X509Update {
  readonly svids: readonly WorkloadX509Svid[]
  /** X.509 authorities (DER) by trust domain name: our own and the federated ones these SVIDs use. */
  readonly bundles: ReadonlyMap<string, readonly Uint8Array[]>
}

export interface BundlesUpdate {
  /** X.509 authorities (DER) by trust domain name. */
  readonly x509: ReadonlyMap<string, readonly Uint8Array[]>
  /** JWKS JSON (standard JWK Set: keys without SPIFFE `use`) by trust domain name. */
  readonly jwt: ReadonlyMap<string, string>
}

/**
 * Bounds on a FetchJWTSVID request's audiences. Each distinct audience set is a cache key on the
 * agent and a request to the server, so a caller must not be able to make them large.
 */
export const JWT_AUDIENCE_LIMITS = {
  /** Most audiences in one request. */
  maxCount: 32,
  /** Longest audience, in UTF-8 bytes. */
  maxBytes: 1024,
  /** All audiences of one request together, in UTF-8 bytes. */
  maxTotalBytes: 8192,
} as const

/** Why `audience` breaks JWT_AUDIENCE_LIMITS (or is empty), or undefined when it is acceptable. */
export function audienceProblem(audience: readonly string[]): string | undefined {
  if (audience.length === 0 || audience.some((a) => a === '')) return 'audience must be specified'
  if (audience.length > JWT_AUDIENCE_LIMITS.maxCount) {
    return `too many audiences: ${audience.length} > ${JWT_AUDIENCE_LIMITS.maxCount}`
  }
  let total = 0
  for (const a of audience) {
    const n = Buffer.byteLength(a, 'utf8')
    if (n > JWT_AUDIENCE_LIMITS.maxBytes) {
      return `an audience is ${n} bytes, more than ${JWT_AUDIENCE_LIMITS.maxBytes}`
    }
    total += n
  }
  if (total > JWT_AUDIENCE_LIMITS.maxTotalBytes) {
    return `the audiences total ${total} bytes, more than ${JWT_AUDIENCE_LIMITS.maxTotalBytes}`
  }
  return undefined
}

export interface JwtSvidResult {
  readonly spiffeId: string
  readonly token: string
  readonly hint: string
}

export interface WorkloadSource {
  /**
   * Identities whose entry selectors are all in `selectors`. `onUpdate` is called at once with the
   * current state (possibly no SVIDs yet) and again on every change; the returned function
   * unsubscribes. While a subscription lives, its SVIDs are never evicted from the cache.
   */
  subscribeX509(selectors: readonly Selector[], onUpdate: (u: X509Update) => void): () => void
  /** Every bundle the agent has; called at once and on every change. */
  subscribeBundles(onUpdate: (u: BundlesUpdate) => void): () => void
  /** JWT-SVIDs for the matching identities (all, or only `spiffeId`), minted or from cache. */
  fetchJwtSvids(
    selectors: readonly Selector[],
    audience: readonly string[],
    spiffeId?: string,
  ): Promise<JwtSvidResult[]>
  /** JWT authorities of a trust domain, for ValidateJWTSVID. */
  jwtBundle(td: TrustDomain): JwtBundle | undefined
}

/** What is known of a Workload API caller from the kernel, checked again after attestation. */
export interface PeerInfo {
  readonly pid: number
  readonly uid: number
  readonly gid: number
  /**
   * The caller's /proc files, opened when it connected (the endpoint sets them): reads through
   * them fail once that process is gone, whoever has its pid now.
   */
  readonly proc?: ProcFiles
}

/** A workload attestor plugin (unix, systemd, docker): selectors from a caller's pid. */
export interface WorkloadAttestor {
  readonly kind: 'WorkloadAttestor'
  readonly name: string
  /**
   * True when attest() never reads its signal: the middleware then passes none (an AbortSignal
   * per attestation showed in the profile). The middleware's deadline and callers leaving still
   * end the wait for it either way.
   */
  readonly ignoresSignal?: boolean
  attest(peer: PeerInfo, signal?: AbortSignal): Promise<Selector[]>
}
