/**
 * The trust bundle the agent serves and trusts: restored from storage, replaced on attestation and
 * when GetBundle returns a newer sequence, pushed to bundle subscribers (X.509 authorities and the
 * JWT keys as a JWKS per trust domain).
 */
import type { JwtBundle, TrustBundle } from '../../spiffe/bundle.js'
import type { TrustDomain } from '../../spiffe/id.js'
import type { BundlesUpdate } from '../workload-api/types.js'

export class BundleState {
  current: TrustBundle | undefined
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

  private update(): BundlesUpdate {
    const x509b = new Map<string, readonly Uint8Array[]>()
    const jwt = new Map<string, string>()
    const b = this.current
    if (b) {
      x509b.set(this.td.name, b.x509Authorities)
      const keys = (JSON.parse(b.toSpiffeJson()) as { keys: { use?: string }[] }).keys
        .filter((k) => k.use === 'jwt-svid')
        .map(({ use: _use, ...k }) => k)
      jwt.set(this.td.name, JSON.stringify({ keys }))
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

  jwtBundle(td: TrustDomain): JwtBundle | undefined {
    return this.current && td.equals(this.td) ? this.current.jwtBundle() : undefined
  }
}
