/**
 * The manager's bundle traffic: our own bundle and the federated ones restored from storage at
 * start, fetched on each sync (GetBundle, GetFederatedBundles) and taken when the server pushes
 * one (MQTT). Every change is saved, trusted by the client, and then announced through `changed`
 * so the manager can tell bundle and X509-SVID subscribers.
 */
import type { Log } from '../common/log.js'
import { TrustBundle } from '../spiffe/bundle.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { AgentAuth, NodeClient } from '../transport/node-client.js'
import type { BundleState } from './cache/bundle.js'
import type { EntrySync } from './cache/entries.js'
import type { AgentStorage } from './storage.js'

export interface BundleSyncDeps {
  readonly trustDomain: TrustDomain
  readonly client: NodeClient
  readonly storage: AgentStorage
  readonly log: Log
  readonly bundle: BundleState
  readonly entries: EntrySync
  readonly auth: () => AgentAuth
  /** True once the manager stopped: a late push is then ignored. */
  readonly stopped: () => boolean
  /** A bundle changed (after it was saved and logged). */
  readonly changed: () => void
}

export class BundleSync {
  private readonly d: BundleSyncDeps

  constructor(d: BundleSyncDeps) {
    this.d = d
  }

  /** Our own saved bundle, trusted before anything talks to the server. */
  restoreOwn(json: string | undefined): void {
    if (!json) return
    this.d.bundle.current = TrustBundle.fromSpiffeJson(this.d.trustDomain, json)
    this.d.client.setBundle(this.d.bundle.current)
  }

  /** Saved federated bundles: served before the server answers, like our own and the entries. */
  restoreFederated(json: string): void {
    this.d.bundle.adoptFederated(
      JSON.parse(json) as { trustDomain: string; bundle: string }[],
      (td, err) =>
        this.d.log('warn', 'a saved federated bundle is unusable; dropped', {
          trust_domain: td,
          error: err.message,
        }),
    )
  }

  async sync(): Promise<void> {
    const r = await this.d.client.call('GetBundle', {}, this.d.auth())
    this.take(TrustBundle.fromSpiffeJson(this.d.trustDomain, r.bundle))
  }

  /** A verified bundle from the server: kept, trusted and served when newer than ours. */
  take(b: TrustBundle): void {
    const cur = this.d.bundle.current
    if (this.d.stopped() || (cur && b.sequence <= cur.sequence)) return
    this.d.bundle.current = b
    this.d.client.setBundle(b)
    this.d.storage.save({ bundle: b.toSpiffeJson() })
    this.d.log('info', 'trust bundle updated', { sequence: b.sequence })
    this.d.changed()
  }

  /**
   * The bundles of the trust domains our entries federate with. Asked only when an entry names
   * one (or we hold some to drop), so agents without federation make no extra call.
   */
  async syncFederated(): Promise<void> {
    const { bundle } = this.d
    const wanted = [...this.d.entries.entries.values()].some((e) => e.federatesWith.length > 0)
    if (!wanted && bundle.federated.size === 0) return
    const r = wanted
      ? await this.d.client.call('GetFederatedBundles', {}, this.d.auth())
      : { bundles: [] }
    const changed = bundle.adoptFederated(r.bundles, (td, err) =>
      this.d.log('warn', 'the server sent a federated bundle we cannot use; keeping the old one', {
        trust_domain: td,
        error: err.message,
      }),
    )
    if (!changed) return
    this.d.storage.save({
      federatedBundles: JSON.stringify(
        [...bundle.federated].map(([td, b]) => ({ trustDomain: td, bundle: b.toSpiffeJson() })),
      ),
    })
    this.d.log('info', 'federated bundles updated', {
      trust_domains: [...bundle.federated.keys()].join(','),
    })
    this.d.changed()
  }
}
