/**
 * X509Source (go-spiffe's workloadapi.X509Source): one FetchX509SVID watch that always holds the
 * workload's current X509-SVIDs and the X.509 bundles (its own trust domain and federated ones).
 * The TLS and gRPC helpers read from it at each new connection, so rotation needs no restart.
 */
import { WorkloadProtocolError } from '../../../src/agent/workload-api/errors.js'
import { NoSvidError } from './errors.js'
import { SourceBase } from './source-base.js'
import {
  parseX509Bundles,
  parseX509Svid,
  type TrustDomain,
  type X509Bundle,
  type X509Svid,
} from './svid.js'
import { type BackoffOptions, StreamWatch } from './watcher.js'
import {
  type ClientOptions,
  connectWorkloadApi,
  type RawWorkloadClient,
} from './workload/client.js'
import { decode, type X509SvidResponseMsg } from './workload/proto.js'

/** Chooses the SVID to present among those the agent serves (go-spiffe's WithDefaultX509SVIDPicker). */
export type X509SvidPicker = (svids: readonly X509Svid[]) => X509Svid | undefined

export interface X509SourceOptions extends ClientOptions {
  /** Pick the SVID with this hint (the entry's hint). */
  readonly hint?: string
  /** Or pick with a function; default: the first SVID, the one the spec makes the default. */
  readonly picker?: X509SvidPicker
  readonly backoff?: BackoffOptions
}

export interface X509Context {
  readonly svids: readonly X509Svid[]
  /** X.509 bundles by trust domain name. */
  readonly bundles: ReadonlyMap<string, X509Bundle>
}

/** The part of an X509Source the TLS/gRPC helpers need (tests can pass any implementation). */
export interface X509SvidSource {
  getX509Svid(): X509Svid
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined
  x509Bundles(): ReadonlyMap<string, X509Bundle>
  /** Bumped on every update: caches keyed by it see rotations. */
  readonly generation: number
  on(event: 'update', l: () => void): unknown
  off(event: 'update', l: () => void): unknown
}

export class X509Source extends SourceBase<X509Context> implements X509SvidSource {
  private ctx: X509Context | undefined
  private gen = 0
  private readonly client: RawWorkloadClient
  private readonly watch: StreamWatch
  private readonly pick: X509SvidPicker

  constructor(opts: X509SourceOptions = {}) {
    super('X509Source')
    const { hint, picker } = opts
    this.pick = picker ?? (hint === undefined ? (s) => s[0] : (s) => s.find((x) => x.hint === hint))
    this.client = connectWorkloadApi(opts)
    this.watch = new StreamWatch(
      this.client,
      'FetchX509SVID',
      (b) => this.onMessage(b),
      (err, fatal) => this.watchFailed(err, fatal),
      opts.backoff,
    )
    this.watch.start()
  }

  private onMessage(b: Uint8Array): void {
    const m = decode<X509SvidResponseMsg>('X509SVIDResponse', b)
    if (m.svids.length === 0) throw new WorkloadProtocolError('X509SVIDResponse holds no SVIDs')
    const svids = m.svids.map(parseX509Svid)
    const bundles = new Map<string, X509Bundle>()
    parseX509Bundles(m.federatedBundles, bundles)
    // The SVID's own bundle wins over a federated entry of the same name.
    for (const raw of m.svids) {
      const td = raw.spiffeId.slice('spiffe://'.length).split('/')[0] ?? ''
      parseX509Bundles({ [td]: raw.bundle }, bundles)
    }
    this.ctx = { svids, bundles }
    this.gen++
    this.applied(this.ctx, true)
  }

  get generation(): number {
    return this.gen
  }

  /** The SVID the picker (or hint) chooses; throws ERR_SOURCE_NO_SVID if none. */
  getX509Svid(): X509Svid {
    this.checkOpen()
    const ctx = this.ctx
    if (ctx === undefined) throw new NoSvidError('the X509Source has no SVIDs yet')
    const svid = this.pick(ctx.svids)
    if (svid === undefined) {
      throw new NoSvidError(
        `no SVID matches the picker among ${ctx.svids.map((s) => `${s.id} (hint ${JSON.stringify(s.hint)})`).join(', ')}`,
      )
    }
    return svid
  }

  /** Every SVID the agent serves this workload, in its order. */
  getX509Svids(): readonly X509Svid[] {
    this.checkOpen()
    return this.ctx?.svids ?? []
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    this.checkOpen()
    return this.ctx?.bundles.get(td.name)
  }

  x509Bundles(): ReadonlyMap<string, X509Bundle> {
    this.checkOpen()
    return this.ctx?.bundles ?? new Map()
  }

  protected stop(): void {
    this.watch.close()
    this.client.close()
    this.ctx = undefined
  }
}

/** Starts an X509Source (connects and watches at once); `await source.ready()` before use. */
export function createX509Source(opts: X509SourceOptions = {}): X509Source {
  return new X509Source(opts)
}
