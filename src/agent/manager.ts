/**
 * The agent's manager: it composes the agent identity (cache/identity.ts), the entry sync
 * (cache/entries.ts), the workload X509-SVIDs (cache/x509-svids.ts), the JWT-SVID cache
 * (cache/jwt-svids.ts), the bundle (cache/bundle.ts) and the sync timing (cache/schedule.ts); it
 * runs one sync round and acts on a refusal. It is the WorkloadSource the Workload API serves
 * from, so workloads are answered from memory and keep being answered while the server is
 * unreachable; the sync loop retries with capped exponential backoff and reports it in health().
 * It talks to the server only through a NodeClient.
 *
 * Bundle fetching and pushes live in bundle-sync.ts, attestation in identity-recovery.ts and what
 * a failure or refusal means in sync-errors.ts; start-up order and the sync round stay here.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Log } from '../common/log.js'
import type { SpiffeEdgeError } from '../errors.js'
import type { KeyManager, KeyType } from '../keymanager/types.js'
import type { JwtBundle } from '../spiffe/bundle.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { NodeClient } from '../transport/node-client.js'
import { BundleSync } from './bundle-sync.js'
import { BundleState } from './cache/bundle.js'
import { EntrySync, sel } from './cache/entries.js'
import { IdentityKeeper } from './cache/identity.js'
import { checkAudience, JWT_CACHE_DEFAULT_BYTES, JwtSvidCache } from './cache/jwt-svids.js'
import { OfflineClock, type OfflineStatus } from './cache/offline.js'
import { SyncSchedule } from './cache/schedule.js'
import type { SealedSvidStore } from './cache/sealed-svids.js'
import { X509SvidCache } from './cache/x509-svids.js'
import { trimHeapAfterNextGc } from './heap-trim.js'
import { IdentityRecovery } from './identity-recovery.js'
import type { AgentStorage } from './storage.js'
import { fatalRefusalError, isIdentityRefusal, isRefusal, syncFailureLog } from './sync-errors.js'
import type {
  BundlesUpdate,
  JwtSvidResult,
  Selector,
  WorkloadSource,
  X509Update,
} from './workload-api/types.js'

export interface Clock {
  now(): Date
}

export interface ManagerOptions {
  readonly trustDomain: TrustDomain
  readonly client: NodeClient
  readonly storage: AgentStorage
  readonly keyManager: KeyManager
  readonly attestor: AgentNodeAttestor
  readonly workloadKeyType: KeyType
  readonly syncIntervalMs: number
  readonly cacheMaxSize: number
  readonly clock?: Clock
  readonly log: Log
  /** For tests: [0,1) jitter source. */
  readonly random?: () => number
  /** Cap on the JWT-SVID cache, in bytes (tokens, keys, IDs); default 8 MiB. */
  readonly jwtCacheMaxBytes?: number
  /**
   * Called once when the server will never accept this agent again (banned, or evicted without a
   * way to re-attest): the manager has stopped and serves nothing; the agent should exit.
   */
  readonly onFatal?: (err: SpiffeEdgeError) => void
  /** The sealed on-disk SVID cache; without it workload SVIDs live in memory only. */
  readonly sealed?: SealedSvidStore
  /** SPIRE's availability_target, ms (0 or absent: half-life rotation). */
  readonly availabilityTargetMs?: number
}

/** A restored SVID with less than this left waits (at most START_WAIT_MS) for the first sync. */
const NEAR_EXPIRY_MS = 30_000
const START_WAIT_MS = 1000
/** Issuing syncs smaller than this leave too little freed memory behind to trim for. */
const TRIM_AFTER_SVIDS = 50

export class AgentManager implements WorkloadSource {
  private readonly o: ManagerOptions
  private readonly clock: Clock
  private readonly random: () => number
  private readonly identity: IdentityKeeper
  private readonly entries: EntrySync
  private readonly x509: X509SvidCache
  private readonly jwt: JwtSvidCache
  private readonly bundle: BundleState
  private readonly schedule: SyncSchedule
  private stopped = false
  private unsubscribePush: (() => void) | undefined
  private syncing: Promise<void> | undefined
  private failures = 0
  private lastError: string | undefined
  private readonly offline: OfflineClock
  private readonly bundles: BundleSync
  private readonly recovery: IdentityRecovery

  constructor(o: ManagerOptions) {
    this.o = o
    this.clock = o.clock ?? { now: () => new Date() }
    this.random = o.random ?? Math.random
    const now = () => this.now()
    const auth = () => this.identity.auth()
    const common = { client: o.client, log: o.log, now, random: this.random }
    this.offline = new OfflineClock(o.storage, o.log, now)
    const availabilityTargetMs = o.availabilityTargetMs ?? 0
    this.identity = new IdentityKeeper({
      ...common,
      availabilityTargetMs,
      storage: o.storage,
      keyManager: o.keyManager,
      attestor: o.attestor,
    })
    this.entries = new EntrySync(o.client, o.storage)
    this.bundle = new BundleState(o.trustDomain)
    this.x509 = new X509SvidCache({
      ...common,
      auth,
      entries: this.entries,
      bundle: () => this.bundle.current,
      federated: (td) => this.bundle.federated.get(td),
      trustDomain: o.trustDomain,
      workloadKeyType: o.workloadKeyType,
      cacheMaxSize: o.cacheMaxSize,
      requestSync: () => void this.syncNow().catch(() => undefined),
      availabilityTargetMs,
      onChange: () => this.persistSvids(),
    })
    this.jwt = new JwtSvidCache({
      ...common,
      auth,
      maxBytes: o.jwtCacheMaxBytes ?? JWT_CACHE_DEFAULT_BYTES,
    })
    this.schedule = new SyncSchedule({
      intervalMs: o.syncIntervalMs,
      now,
      random: this.random,
      sync: () => this.syncNow(),
      failures: () => this.failures,
      agent: () => this.identity.current,
      nextRotation: (t) => this.x509.nextRotation(t),
      overdueExpiry: (t) => this.x509.overdueExpiry(t),
    })
    this.bundles = new BundleSync({
      trustDomain: o.trustDomain,
      client: o.client,
      storage: o.storage,
      log: o.log,
      bundle: this.bundle,
      entries: this.entries,
      auth,
      stopped: () => this.stopped,
      changed: () => {
        this.bundle.notify()
        this.x509.notify()
      },
    })
    this.recovery = new IdentityRecovery({
      identity: this.identity,
      bundle: this.bundle,
      entries: this.entries,
      attestor: o.attestor,
      log: o.log,
    })
  }

  /** Rewrites the sealed cache with what we hold now (coalesced in the store). */
  private persistSvids(): void {
    const id = this.identity.current?.spiffeId
    if (this.o.sealed && id) void this.o.sealed.save(id, this.x509.snapshot())
  }

  private now(): number {
    // The caches ask per Workload API call (several times per stream): no Date per ask unless a
    // clock was injected.
    return this.o.clock ? this.clock.now().getTime() : Date.now()
  }

  get agentId(): string | undefined {
    return this.identity.current?.spiffeId
  }

  /**
   * Restores saved state and the sealed SVID cache. With cached SVIDs to serve, start returns at
   * once and the first sync runs in the background (the server may be away: a reboot during an
   * outage). Otherwise it attests if it must and runs one sync so workloads have SVIDs at once;
   * a failure there fails the start only when the agent has no identity at all to keep trying
   * with (first start), or when it needs a new join token.
   */
  async start(): Promise<void> {
    const state = this.o.storage.load()
    this.bundles.restoreOwn(state.bundle)
    this.offline.restore(state.lastSyncOk)
    await this.identity.restore(state)
    // A pushed bundle (MQTT) is taken at once, so a CA rotation needs no poll to arrive.
    this.unsubscribePush ??= this.o.client.onBundle?.((b) => this.bundles.take(b))
    const a = this.identity.current
    if (state.entries && a) this.entries.restore(state.entries, state.revision)
    if (state.federatedBundles && a) this.bundles.restoreFederated(state.federatedBundles)
    if (this.o.sealed && a) {
      const records = await this.o.sealed.load(a.spiffeId, this.bundle.current, this.now())
      const n = this.x509.restore(records)
      if (n > 0) {
        this.o.log('info', 'serving workload SVIDs from the sealed cache', {
          svids: n,
          first_expires: new Date(this.x509.firstExpiry()!).toISOString(),
        })
      }
    }
    if (this.x509.size > 0) {
      const first = this.syncNow().catch(() => undefined) // logged by sync()
      // A cached SVID about to run out is worth a short wait for a fresh one when the server
      // is there; an offline start still serves within START_WAIT_MS.
      if (this.x509.firstExpiry()! - this.now() < NEAR_EXPIRY_MS) {
        await Promise.race([first, sleep(START_WAIT_MS, undefined, { ref: false })])
      }
    } else {
      try {
        await this.syncNow()
      } catch (err) {
        const code = (err as { code?: unknown }).code
        if (!this.identity.current || code === 'ERR_AGENT_SVID_EXPIRED') throw err
        this.o.log('warn', 'started without the server: nothing cached to serve yet; retrying', {
          error: (err as Error).message,
        })
      }
    }
    if (!this.stopped) this.schedule.start()
  }

  /** One sync (coalesced with a running one). Rejects when it failed; the state is kept. */
  syncNow(): Promise<void> {
    this.syncing ??= this.sync().finally(() => {
      this.syncing = undefined
    })
    return this.syncing
  }

  private async sync(): Promise<void> {
    try {
      const a = this.identity.current
      // Never sign with an expired SVID: the server would take it for an evicted agent.
      if (!a || this.identity.expired()) await this.recovery.recover()
      else if (this.now() >= a.rotateAt) {
        // Renew the agent SVID (RenewAgent), or attest again when the attestor allows it.
        if (a.reattestable) await this.recovery.attest()
        else await this.identity.renew()
      }
      await this.bundles.sync()
      if (await this.entries.sync(this.identity.auth())) this.x509.entriesChanged()
      await this.bundles.syncFederated()
      // Past a few SVIDs the sync's freed native memory is worth handing back (heap-trim.ts).
      if ((await this.x509.sync()) >= TRIM_AFTER_SVIDS) trimHeapAfterNextGc()
      const wasFailing = this.failures > 0
      this.failures = 0
      this.lastError = undefined
      this.offline.ok(wasFailing)
    } catch (err) {
      this.failures++
      this.lastError = (err as Error).message
      const offlineSeconds = this.offline.failed()
      const first = this.x509.firstExpiry()
      this.o.log('warn', ...syncFailureLog(err, this.failures, offlineSeconds, first))
      if (isIdentityRefusal(err)) {
        // The server no longer accepts this identity: forget it. An attestor that can attests
        // again; otherwise nothing will ever be renewed, so stop serving (SPIRE's agent exits).
        this.o.storage.clearIdentity()
        if (err.reason !== 'banned' && this.identity.current?.reattestable) {
          this.o.log('warn', 'the server no longer accepts the agent identity; attesting again', {
            reason: err.reason,
          })
          await this.recovery.attest().catch((e: unknown) => this.refused(e))
        } else {
          this.refused(err)
        }
      }
      throw err
    } finally {
      this.x509.flushWaiting()
    }
  }

  /** A refusal that ends this agent: stop, drop what we serve, log why, tell the owner. */
  private refused(err: unknown): void {
    if (!isRefusal(err) || this.stopped) return
    const id = this.identity.current?.spiffeId ?? 'unknown'
    const fatal = fatalRefusalError(err, id)
    this.stopped = true
    this.schedule.stop()
    // Nothing of this identity may be served again, not even after a restart: empty the cache.
    void this.o.sealed?.save(id, [])
    this.identity.current = undefined
    this.x509.clear()
    this.jwt.clear()
    this.x509.notify()
    this.o.log('error', fatal.message, {
      code: fatal.code,
      reason: err.reason,
      remedy: fatal.remedy,
    })
    this.o.onFatal?.(fatal)
  }

  // ------------------------------------------------------------ WorkloadSource

  subscribeX509(selectors: readonly Selector[], onUpdate: (u: X509Update) => void): () => void {
    return this.x509.subscribe(selectors, onUpdate)
  }

  subscribeBundles(onUpdate: (u: BundlesUpdate) => void): () => void {
    return this.bundle.subscribe(onUpdate)
  }

  async fetchJwtSvids(
    selectors: readonly Selector[],
    audience: readonly string[],
    spiffeId?: string,
  ): Promise<JwtSvidResult[]> {
    const aud = checkAudience(audience)
    const seen = new Set<string>()
    const entries = this.entries.matching(new Set(selectors.map(sel))).filter((e) => {
      if (spiffeId !== undefined && e.spiffeId !== spiffeId) return false
      if (seen.has(e.spiffeId)) return false
      seen.add(e.spiffeId)
      return true
    })
    return this.jwt.fetch(entries, aud)
  }

  /** For tests and diagnostics: cached JWT-SVIDs and what they cost. */
  jwtCacheStats(): { entries: number; bytes: number; maxBytes: number } {
    return this.jwt.stats()
  }

  /** For benches and diagnostics: cached X.509-SVIDs and their own bytes (chains and keys). */
  x509CacheStats(): { entries: number; bytes: number } {
    return this.x509.stats()
  }

  jwtBundle(td: TrustDomain): JwtBundle | undefined {
    return this.bundle.jwtBundle(td)
  }

  // ------------------------------------------------------------ health and lifecycle

  /**
   * The agent's status. `offline`: the server has not answered since `offlineSince` (the last
   * successful sync, kept across restarts), `offlineSeconds` so far; `firstSvidExpiresAt`: when the
   * first cached workload SVID runs out (the deadline an outage must end by); `errorCode`: a
   * stable code when the agent needs an operator (ERR_AGENT_SVID_EXPIRED: a new join token).
   */
  health(): OfflineStatus & {
    ready: boolean
    agentId?: string
    failures: number
    lastError?: string
    errorCode?: string
    agentExpiresAt?: string
    cachedSvids: number
    firstSvidExpiresAt?: string
  } {
    const a = this.identity.current
    const now = this.now()
    const h: ReturnType<AgentManager['health']> = {
      ready: a !== undefined && a.notAfter > now,
      failures: this.failures,
      ...this.offline.status(this.failures),
      cachedSvids: this.x509.size,
    }
    if (a) {
      h.agentId = a.spiffeId
      h.agentExpiresAt = new Date(a.notAfter).toISOString()
    }
    if (this.lastError) h.lastError = this.lastError
    if (this.recovery.needsNewToken) h.errorCode = this.recovery.needsNewToken.code
    const first = this.x509.firstExpiry()
    if (first !== undefined) h.firstSvidExpiresAt = new Date(first).toISOString()
    return h
  }

  /** For tests and diagnostics. */
  cachedSvidCount(): number {
    return this.x509.size
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.unsubscribePush?.()
    this.schedule.stop()
    await this.syncing?.catch(() => undefined)
    await this.o.sealed?.flushed()
  }
}
