/**
 * The trust bundles the agent serves and trusts: our own (restored from storage, replaced on
 * attestation and when GetBundle returns a newer sequence) and those of federated trust domains
 * (GetFederatedBundles, for the domains our entries federate with). Pushed to bundle subscribers
 * as X.509 authorities and a JWKS per trust domain; never merged across trust domains.
 */
import { type JwtBundle, TrustBundle } from '../../spiffe/bundle.js'
import { TrustDomain } from '../../spiffe/id.js'
import type { BundlesUpdate } from '../workload-api/types.js'

/** A standard JWK Set of the bundle's JWT keys (no SPIFFE `use`), as SPIRE serves them. */
function jwks(b: TrustBundle): string {
  const keys = (JSON.parse(b.toSpiffeJson()) as { keys: { use?: string }[] }).keys
    .filter((k) => k.use === 'jwt-svid')
    .map(({ use: _use, ...k }) => k)
  return JSON.stringify({ keys })
}

export class BundleState {
  current: TrustBundle | undefined
  /** Bundles of federated trust domains, by name. */
  readonly federated = new Map<string, TrustBundle>()
  private readonly td: TrustDomain
  private readonly subs = new Set<(u: BundlesUpdate) => void>()

  constructor(td: TrustDomain) {
    this.td = td
  }

  /** Takes `b` and tells the subscribers. */
  adopt(b: TrustBundle): void {
    this.current = b
    this.notify()
  }

  /**
   * Replaces the federated bundles with what the server sent (a domain it no longer sends is
   * dropped: no entry of ours federates with it any more). A bundle that does not parse, or is of
   * our own domain, is skipped and the old one kept. True when anything changed.
   */
  adoptFederated(
    list: readonly { trustDomain: string; bundle: string }[],
    onBad: (td: string, err: Error) => void,
  ): boolean {
    const next = new Map<string, TrustBundle>()
    for (const f of list) {
      try {
        const td = TrustDomain.parse(f.trustDomain)
        if (td.equals(this.td)) throw new Error('the server sent our own trust domain as foreign')
        next.set(td.name, TrustBundle.fromSpiffeJson(td, f.bundle))
      } catch (err) {
        onBad(f.trustDomain, err as Error)
        const old = this.federated.get(f.trustDomain)
        if (old) next.set(f.trustDomain, old)
      }
    }
    let changed = next.size !== this.federated.size
    for (const [td, b] of next) if (!b.equals(this.federated.get(td))) changed = true
    if (!changed) return false
    this.federated.clear()
    for (const [td, b] of next) this.federated.set(td, b)
    return true
  }

  private update(): BundlesUpdate {
    const x509b = new Map<string, readonly Uint8Array[]>()
    const jwt = new Map<string, string>()
    const b = this.current
    if (b) {
      x509b.set(this.td.name, b.x509Authorities)
      jwt.set(this.td.name, jwks(b))
    }
    for (const [td, f] of this.federated) {
      x509b.set(td, f.x509Authorities)
      jwt.set(td, jwks(f))
    }
    return { x509: x509b, jwt }
  }

  notify(): void {
    const u = this.update()
    for (const cb of this.subs) cb(u)
  }

  subscribe(onUpdate: (u: BundlesUpdate) => void): () => void {
    this.subs.add(onUpdate)
    onUpdate(this.update())
    return () => {
      this.subs.delete(onUpdate)
    }
  }

  /** JWT authorities of our own or a federated trust domain (ValidateJWTSVID). */
  jwtBundle(td: TrustDomain): JwtBundle | undefined {
    if (td.equals(this.td)) return this.current?.jwtBundle()
    return this.federated.get(td.name)?.jwtBundle()
  }
}
