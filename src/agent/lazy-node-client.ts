/**
 * A NodeClient that loads its transport (grpc-client.ts and the node API protos, or the MQTT
 * client and the mqtt package) on first use. An agent starting from its sealed cache serves its
 * workloads before it talks to the server, so that code (and, over MQTT, a few hundred ms of
 * module loading) is kept off the cold-start path (docs/benchmarks.md, offline cold start).
 * Nothing about trust changes: the real client is built with the same options, and the bundle the
 * agent sets before it loads is handed over before its first call.
 */
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Signer } from '../keymanager/types.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { AgentAuth, AttestResult, NodeClient } from '../transport/node-client.js'
import type { CallMethod, CallMethods, Init } from '../transport/proto.js'

export class LazyNodeClient implements NodeClient {
  private real: NodeClient | undefined
  private loading: Promise<NodeClient> | undefined
  private bundle: TrustBundle | undefined
  private closed = false
  private readonly listeners = new Set<(b: TrustBundle) => void>()
  private unsubscribe: (() => void) | undefined
  private readonly load: () => Promise<NodeClient>

  /** `load` builds the real client; `initial` is the bundle it is built with ('insecure': none). */
  constructor(load: () => Promise<NodeClient>, initial: TrustBundle | 'insecure') {
    this.load = load
    if (initial !== 'insecure') this.bundle = initial
  }

  /** The real client, loaded once (a failed load is retried on the next call). */
  private client(): Promise<NodeClient> {
    if (this.real) return Promise.resolve(this.real)
    this.loading ??= this.load().then(
      (c) => {
        if (this.bundle && c.currentBundle() !== this.bundle) c.setBundle(this.bundle)
        this.unsubscribe = c.onBundle?.((b) => {
          this.bundle = b
          for (const l of this.listeners) l(b)
        })
        // close() during the load: nothing may stay connected.
        if (this.closed) c.close()
        this.real = c
        return c
      },
      (err: unknown) => {
        this.loading = undefined
        throw err
      },
    )
    return this.loading
  }

  async attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
    return (await this.client()).attestAgent(attestor, signer)
  }

  async call<M extends CallMethod>(
    method: M,
    body: Init<CallMethods[M]['request']>,
    auth?: AgentAuth,
  ): Promise<CallMethods[M]['response']> {
    return (await this.client()).call(method, body, auth)
  }

  setBundle(b: TrustBundle): void {
    this.bundle = b
    this.real?.setBundle(b)
  }

  currentBundle(): TrustBundle | undefined {
    return this.real ? this.real.currentBundle() : this.bundle
  }

  onBundle(listener: (b: TrustBundle) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  warmUp(): void {
    // Best effort: a failed load or connect is reported by the call that follows (and retried
    // there), never as an unhandled rejection.
    this.client()
      .then((c) => c.warmUp?.())
      .catch(() => undefined)
  }

  close(): void {
    this.closed = true
    this.unsubscribe?.()
    this.real?.close()
  }
}
