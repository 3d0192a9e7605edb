/**
 * The agent's manager: its own identity (attest, renew or re-attest at half-life), the entries
 * authorized to it (incremental sync), the workload SVIDs (keys generated here, never sent; rotated
 * at half-life with jitter), JWT-SVIDs cached per (SPIFFE ID, audience set), and the bundle. It is
 * the WorkloadSource the Workload API serves from, so workloads are answered from memory and keep
 * being answered while the server is unreachable; the sync loop retries with capped exponential
 * backoff and reports it in health().
 */
import type { KeyObject } from 'node:crypto'
import type { AgentNodeAttestor } from '../attestors/types.js'
import { createCsr } from '../common/csr.js'
import type { Log } from '../common/log.js'
import { x509 } from '../common/x509.js'
import { SpiffeEdgeError } from '../errors.js'
import { generateSoftwareKeyPair, softwareKey } from '../keymanager/memory.js'
import type { Key, KeyManager, KeyType } from '../keymanager/types.js'
import type { JwtBundle } from '../spiffe/bundle.js'
import { TrustBundle } from '../spiffe/bundle.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { AgentAuth, NodeClient } from '../transport/node-client.js'
import { NodeCallError } from '../transport/node-client.js'
import { type EntryMessage, required } from '../transport/proto.js'
import type { AgentStorage } from './storage.js'
import { GrpcStatus, WorkloadStatusError } from './workload-api/errors.js'
import {
  audienceProblem,
  type BundlesUpdate,
  type JwtSvidResult,
  type Selector,
  type WorkloadSource,
  type WorkloadX509Svid,
  type X509Update,
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
}

interface CachedJwt {
  readonly token: string
  readonly issuedAt: number
  readonly expiresAt: number
  readonly hint: string
  readonly spiffeId: string
  /** What this cache slot costs: key and strings in UTF-8, plus a fixed overhead. */
  readonly bytes: number
}

/** Hard limits on cached JWT-SVIDs: count as SPIRE has it, and bytes (audiences can be long). */
const JWT_CACHE_MAX_ENTRIES = 1000
const JWT_CACHE_DEFAULT_BYTES = 8 << 20
const JWT_CACHE_SLOT_OVERHEAD = 128

interface AgentIdentity {
  spiffeId: string
  chain: Uint8Array[]
  key: Key
  notBefore: number
  notAfter: number
  rotateAt: number
  reattestable: boolean
}

interface CachedSvid extends WorkloadX509Svid {
  readonly entryRevision: number
  readonly notAfter: number
  readonly rotateAt: number
  lastAccess: number
}

interface X509Sub {
  readonly selectors: ReadonlySet<string>
  readonly cb: (u: X509Update) => void
  last: string | undefined
  /** Deferred first update: waiting for SVIDs of matching entries. */
  waitingUntil: number | undefined
}

const sel = (s: Selector) => `${s.type}:${s.value}`
const MAX_BATCH = 500

function validity(der: Uint8Array): { notBefore: number; notAfter: number } {
  const c = new x509.X509Certificate(der)
  return { notBefore: c.notBefore.getTime(), notAfter: c.notAfter.getTime() }
}

export class AgentManager implements WorkloadSource {
  private readonly o: ManagerOptions
  private readonly clock: Clock
  private readonly random: () => number
  private agent: AgentIdentity | undefined
  private bundle: TrustBundle | undefined
  private entries = new Map<string, EntryMessage>()
  private revision = 0
  private readonly svids = new Map<string, CachedSvid>()
  private readonly jwtCache = new Map<string, CachedJwt>()
  private jwtCacheBytes = 0
  /** Entries the server refused to issue an X509-SVID for, by id → the entry revision refused. */
  private readonly issueRefused = new Map<string, number>()
  private readonly x509Subs = new Set<X509Sub>()
  private readonly bundleSubs = new Set<(u: BundlesUpdate) => void>()
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private syncing: Promise<void> | undefined
  private failures = 0
  private lastSyncOk: number | undefined
  private lastError: string | undefined
  private keyCounter = 0

  constructor(o: ManagerOptions) {
    this.o = o
    this.clock = o.clock ?? { now: () => new Date() }
    this.random = o.random ?? Math.random
  }

  private now(): number {
    return this.clock.now().getTime()
  }

  /**
   * SPIRE's half-life rule: rotate when the remaining life falls under half, ±10% jitter. The life
   * counts from when we got the certificate, not its notBefore: servers backdate notBefore (ours by
   * 10 s), which would make a short-lived SVID look half spent on arrival and rotate in a loop.
   */
  private rotateAt(notBefore: number, notAfter: number): number {
    const half = (notAfter - Math.max(notBefore, this.now())) / 2
    const jittered = half + (this.random() * 2 - 1) * (half / 10)
    return notAfter - jittered
  }

  /**
   * The agent SVID renews at its half-life, and in any case a skew margin before it expires (a
   * quarter of its life, at most 30 s), so an agent clock running behind the server's still renews
   * in time. The sync loop wakes for it (nextDelay), whatever the sync interval.
   */
  private agentRotateAt(notBefore: number, notAfter: number): number {
    const life = notAfter - Math.max(notBefore, this.now())
    return Math.min(this.rotateAt(notBefore, notAfter), notAfter - Math.min(30_000, life / 4))
  }

  get agentId(): string | undefined {
    return this.agent?.spiffeId
  }

  private auth(): AgentAuth {
    const a = this.agent
    if (!a) throw new Error('the agent has not attested')
    return { spiffeId: a.spiffeId, chain: a.chain, signer: a.key }
  }

  /** Restores saved state, or attests. Then runs one sync so workloads have SVIDs at once. */
  async start(): Promise<void> {
    const state = this.o.storage.load()
    if (state.bundle) {
      this.bundle = TrustBundle.fromSpiffeJson(this.o.trustDomain, state.bundle)
      this.o.client.setBundle(this.bundle)
    }
    if (state.agentSvid && state.agentSpiffeId && state.agentKeyId) {
      const key = await this.o.keyManager.getKey(state.agentKeyId)
      const leaf = state.agentSvid[0]
      if (key && leaf) {
        const v = validity(leaf)
        if (v.notAfter > this.now()) {
          this.agent = {
            spiffeId: state.agentSpiffeId,
            chain: state.agentSvid,
            key,
            ...v,
            rotateAt: this.agentRotateAt(v.notBefore, v.notAfter),
            reattestable: state.reattestable ?? false,
          }
          this.o.log('info', 'restored agent identity', {
            agent: state.agentSpiffeId,
            expires: new Date(v.notAfter).toISOString(),
          })
        }
      }
    }
    if (state.entries && this.agent) {
      for (const e of JSON.parse(state.entries) as EntryMessage[]) this.entries.set(e.id, e)
      this.revision = state.revision ?? 0
    }
    if (!this.agent) await this.attest()
    await this.syncNow()
    this.schedule(this.nextDelay(this.o.syncIntervalMs))
  }

  private async newAgentKey(): Promise<Key> {
    const id = `agent-svid-${Date.now()}-${++this.keyCounter}`
    return this.o.keyManager.generateKey(id, 'ec-p256')
  }

  /** A failed attempt's fresh key is nobody's (the working identity's key has another id): remove it. */
  private async dropKey(key: Key, err: unknown): Promise<never> {
    await this.o.keyManager.deleteKey(key.id).catch(() => undefined)
    throw err
  }

  /** Node attestation: a new key, evidence, and the agent SVID. */
  private async attest(): Promise<void> {
    const key = await this.newAgentKey()
    const r = await this.o.client
      .attestAgent(this.o.attestor, key)
      .catch((err) => this.dropKey(key, err))
    const old = this.agent
    const v = validity(r.svid.certChain[0]!)
    this.agent = {
      spiffeId: r.svid.spiffeId,
      chain: r.svid.certChain,
      key,
      ...v,
      rotateAt: this.agentRotateAt(v.notBefore, v.notAfter),
      reattestable: r.reattestable,
    }
    this.bundle = r.bundle
    this.o.storage.save({
      agentSvid: r.svid.certChain,
      agentSpiffeId: r.svid.spiffeId,
      reattestable: r.reattestable,
      bundle: r.bundle.toSpiffeJson(),
      agentKeyId: key.id,
    })
    if (old && old.key.id !== key.id) await this.o.keyManager.deleteKey(old.key.id)
    if (old && old.spiffeId !== r.svid.spiffeId) {
      // A different identity: nothing synced for the old one applies.
      this.entries.clear()
      this.revision = 0
    }
    this.o.log('info', 'node attested', { agent: r.svid.spiffeId, attestor: this.o.attestor.name })
    this.notifyBundles()
  }

  /** Renews the agent SVID (RenewAgent), or attests again when the attestor allows it. */
  private async rotateAgent(): Promise<void> {
    const a = this.agent!
    if (a.reattestable) {
      await this.attest()
      return
    }
    const key = await this.newAgentKey()
    const r = await createCsr(key)
      .then((csr) => this.o.client.call('RenewAgent', { csr }, this.auth()))
      .catch((err) => this.dropKey(key, err))
    const svid = required(r.svid, 'RenewAgentResponse.svid')
    const v = validity(svid.certChain[0]!)
    const old = a.key
    this.agent = {
      ...a,
      chain: svid.certChain,
      key,
      ...v,
      rotateAt: this.agentRotateAt(v.notBefore, v.notAfter),
    }
    this.o.storage.save({ agentSvid: svid.certChain, agentKeyId: key.id })
    await this.o.keyManager.deleteKey(old.id)
    this.o.log('info', 'agent SVID renewed', {
      agent: a.spiffeId,
      expires: new Date(v.notAfter).toISOString(),
    })
  }

  private schedule(ms: number): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      void this.syncNow().then(
        () => this.schedule(this.nextDelay(this.o.syncIntervalMs)),
        () => {
          // Capped exponential backoff with jitter: min(8 min, 48 × interval), as SPIRE caps it.
          const cap = Math.min(8 * 60_000, 48 * this.o.syncIntervalMs)
          const delay = Math.min(cap, this.o.syncIntervalMs * 2 ** Math.min(this.failures, 10))
          this.schedule(this.nextDelay(delay / 2 + this.random() * (delay / 2)))
        },
      )
    }, ms)
    this.timer.unref?.()
  }

  /**
   * When to sync next: `base` (the interval, or the backoff), but no later than the next SVID
   * rotation, so a short-lived SVID (clamped to the end of its CA) is not left to expire between
   * syncs. Once the agent SVID is due and renewal keeps failing, retry at a quarter of its
   * remaining life (at most twice a second): backoff must not outlast it.
   */
  private nextDelay(base: number): number {
    const now = this.now()
    let d = base
    const a = this.agent
    if (a) {
      if (a.rotateAt > now) d = Math.min(d, a.rotateAt - now)
      else d = Math.min(d, Math.max(500, (a.notAfter - now) / 4))
    }
    for (const s of this.svids.values()) if (s.rotateAt > now) d = Math.min(d, s.rotateAt - now)
    return Math.max(50, d)
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
      if (this.agent && this.now() >= this.agent.rotateAt) await this.rotateAgent()
      await this.syncBundle()
      await this.syncEntries()
      await this.syncSvids()
      this.failures = 0
      this.lastSyncOk = this.now()
      this.lastError = undefined
    } catch (err) {
      this.failures++
      this.lastError = (err as Error).message
      // A TPM that stopped answering (the agent key signs every request) is not the server's fault.
      const tpm = (err as { code?: unknown }).code === 'ERR_TPM'
      this.o.log('warn', `sync failed (${tpm ? 'TPM' : 'server'}); serving cached identities`, {
        error: this.lastError,
        failures: this.failures,
        remedy: tpm
          ? (err as { remedy?: string }).remedy
          : 'check that the server is reachable; the agent retries with backoff',
      })
      if (
        err instanceof NodeCallError &&
        err.code === 'ERR_SERVER_REFUSED' &&
        ['banned', 'not_attested', 'stale_svid', 'bad_svid'].includes(err.reason)
      ) {
        // The server no longer accepts this identity: forget it. An attestor that can attests
        // again; otherwise nothing will ever be renewed, so stop serving (SPIRE's agent exits).
        this.o.storage.clearIdentity()
        if (err.reason !== 'banned' && this.agent?.reattestable) {
          this.o.log('warn', 'the server no longer accepts the agent identity; attesting again', {
            reason: err.reason,
          })
          await this.attest().catch((e: unknown) => this.refused(e))
        } else {
          this.refused(err)
        }
      }
      throw err
    } finally {
      this.flushWaiting()
    }
  }

  /** A refusal that ends this agent: stop, drop what we serve, log why, tell the owner. */
  private refused(err: unknown): void {
    if (!(err instanceof NodeCallError) || err.code !== 'ERR_SERVER_REFUSED') return
    if (this.stopped) return
    const banned = err.reason === 'banned'
    const fatal = new SpiffeEdgeError(
      banned ? 'ERR_AGENT_BANNED' : 'ERR_AGENT_EVICTED',
      banned
        ? `the server banned this agent (${this.agent?.spiffeId ?? 'unknown'}); stopping`
        : `the server no longer accepts this agent (${this.agent?.spiffeId ?? 'unknown'}, ${err.reason}); stopping`,
      {
        cause: err,
        remedy: banned
          ? 'on the server, evict the agent (spiffe-edge server agent evict), then give it a new join token'
          : 'give the agent a new join token (spiffe-edge server token generate) and start it again',
      },
    )
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    this.agent = undefined
    this.svids.clear()
    this.jwtCache.clear()
    this.notifyX509()
    this.o.log('error', fatal.message, {
      code: fatal.code,
      reason: err.reason,
      remedy: fatal.remedy,
    })
    this.o.onFatal?.(fatal)
  }

  private async syncBundle(): Promise<void> {
    const r = await this.o.client.call('GetBundle', {}, this.auth())
    if (this.bundle && r.sequence <= this.bundle.sequence) return
    const b = TrustBundle.fromSpiffeJson(this.o.trustDomain, r.bundle)
    this.bundle = b
    this.o.client.setBundle(b)
    this.o.storage.save({ bundle: r.bundle })
    this.o.log('info', 'trust bundle updated', { sequence: b.sequence })
    this.notifyBundles()
    this.notifyX509()
  }

  private async syncEntries(): Promise<void> {
    const known = [...this.entries.values()].map((e) => ({
      id: e.id,
      revisionNumber: e.revisionNumber,
    }))
    const r = await this.o.client.call(
      'SyncEntries',
      { sinceRevision: this.revision, known },
      this.auth(),
    )
    if (r.full) this.entries = new Map(r.entries.map((e) => [e.id, e]))
    else {
      for (const e of r.entries) this.entries.set(e.id, e)
      for (const id of r.deletedIds) this.entries.delete(id)
    }
    const changed = r.full || r.entries.length > 0 || r.deletedIds.length > 0
    this.revision = r.revision
    if (changed) {
      this.o.storage.save({
        revision: this.revision,
        entries: JSON.stringify([...this.entries.values()]),
      })
      for (const id of [...this.svids.keys()]) if (!this.entries.has(id)) this.svids.delete(id)
      for (const id of [...this.issueRefused.keys()]) {
        if (!this.entries.has(id)) this.issueRefused.delete(id)
      }
      this.notifyX509()
    }
  }

  /** Which entries need a (new) SVID: missing, due for rotation, or their entry changed. */
  private dueEntries(): EntryMessage[] {
    const now = this.now()
    const subscribed = this.subscribedEntryIds()
    const due: EntryMessage[] = []
    for (const e of this.entries.values()) {
      const have = this.svids.get(e.id)
      if (!have) {
        // Soft cache limit: past it, only entries someone is waiting for get SVIDs ahead of time.
        if (this.svids.size >= this.o.cacheMaxSize && !subscribed.has(e.id)) continue
        due.push(e)
      } else if (now >= have.rotateAt || have.entryRevision !== e.revisionNumber) due.push(e)
    }
    return due
  }

  private async syncSvids(): Promise<void> {
    const due = this.dueEntries()
    for (let i = 0; i < due.length; i += MAX_BATCH) {
      const batch = due.slice(i, i + MAX_BATCH)
      const keys = await Promise.all(
        batch.map(() => generateSoftwareKeyPair(this.o.workloadKeyType)),
      )
      const csrs = await Promise.all(
        keys.map((k, j) =>
          createCsr(softwareKey(`w${j}`, this.o.workloadKeyType, k.privateKey, k.publicKey)),
        ),
      )
      const r = await this.o.client.call(
        'BatchNewX509SVID',
        { params: batch.map((e, j) => ({ entryId: e.id, csr: csrs[j]! })) },
        this.auth(),
      )
      r.results.forEach((res, j) => {
        const e = batch[j]!
        if (res.status !== 0 || !res.svid) {
          // Remembered so watchers of this entry's workloads are not kept waiting for it; the
          // next sync asks again (the server may have been fixed meanwhile).
          this.issueRefused.set(e.id, e.revisionNumber)
          this.o.log('warn', 'the server did not issue an SVID', {
            entry: e.id,
            status: res.status,
            error: res.message,
          })
          return
        }
        this.issueRefused.delete(e.id)
        const v = validity(res.svid.certChain[0]!)
        this.svids.set(e.id, {
          entryId: e.id,
          spiffeId: res.svid.spiffeId,
          chain: res.svid.certChain,
          privateKey: pkcs8(keys[j]!.privateKey),
          hint: e.hint,
          entryRevision: e.revisionNumber,
          notAfter: v.notAfter,
          rotateAt: this.rotateAt(v.notBefore, v.notAfter),
          lastAccess: this.now(),
        })
      })
    }
    this.evict()
    if (due.length > 0) this.notifyX509()
  }

  /** Soft limit: drop least recently used SVIDs nobody subscribes to (SPIRE's LRU semantics). */
  private evict(): void {
    const over = this.svids.size - this.o.cacheMaxSize
    if (over <= 0) return
    const subscribed = this.subscribedEntryIds()
    const victims = [...this.svids.values()]
      .filter((s) => !subscribed.has(s.entryId))
      .sort((a, b) => a.lastAccess - b.lastAccess)
      .slice(0, over)
    for (const v of victims) this.svids.delete(v.entryId)
  }

  // ------------------------------------------------------------ WorkloadSource

  private matching(selectors: ReadonlySet<string>): EntryMessage[] {
    return [...this.entries.values()]
      .filter((e) => e.selectors.length > 0 && e.selectors.every((s) => selectors.has(sel(s))))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }

  private subscribedEntryIds(): Set<string> {
    const out = new Set<string>()
    for (const sub of this.x509Subs) for (const e of this.matching(sub.selectors)) out.add(e.id)
    return out
  }

  private x509Update(selectors: ReadonlySet<string>): X509Update {
    const now = this.now()
    const svids: WorkloadX509Svid[] = []
    for (const e of this.matching(selectors)) {
      const s = this.svids.get(e.id)
      if (!s || s.notAfter <= now) continue
      s.lastAccess = now
      svids.push(s)
    }
    const bundles = new Map<string, readonly Uint8Array[]>()
    if (this.bundle) bundles.set(this.o.trustDomain.name, this.bundle.x509Authorities)
    return { svids, bundles }
  }

  private fingerprint(u: X509Update): string {
    return `${this.bundle?.sequence ?? 0}|${u.svids.map((s) => `${s.entryId}:${Buffer.from(s.chain[0]!).subarray(-16).toString('hex')}`).join(',')}`
  }

  private deliver(sub: X509Sub): void {
    const u = this.x509Update(sub.selectors)
    const fp = this.fingerprint(u)
    if (fp === sub.last) return
    sub.last = fp
    sub.cb(u)
  }

  private notifyX509(): void {
    for (const sub of this.x509Subs) if (sub.waitingUntil === undefined) this.deliver(sub)
  }

  /**
   * Whether an entry of these selectors still lacks an SVID that may yet come. One the server
   * refused (at this revision) will not come soon: waiting for it would delay the others.
   */
  private awaitsSvids(selectors: ReadonlySet<string>): boolean {
    return this.matching(selectors).some(
      (e) => !this.svids.has(e.id) && this.issueRefused.get(e.id) !== e.revisionNumber,
    )
  }

  /** Subscriptions waiting for SVIDs get their first update once they exist, or when time is up. */
  private flushWaiting(): void {
    const now = this.now()
    for (const sub of this.x509Subs) {
      if (sub.waitingUntil === undefined) continue
      if (!this.awaitsSvids(sub.selectors) || now >= sub.waitingUntil) {
        sub.waitingUntil = undefined
        this.deliver(sub)
      }
    }
  }

  subscribeX509(selectors: readonly Selector[], onUpdate: (u: X509Update) => void): () => void {
    const sub: X509Sub = {
      selectors: new Set(selectors.map(sel)),
      cb: onUpdate,
      last: undefined,
      waitingUntil: undefined,
    }
    this.x509Subs.add(sub)
    if (this.awaitsSvids(sub.selectors)) {
      // Entries match but their SVIDs are not issued yet (cache limit, new entry): fetch now and
      // answer when they arrive, rather than telling the workload it has no identity.
      sub.waitingUntil = this.now() + 10_000
      void this.syncNow().catch(() => undefined)
      setTimeout(() => this.flushWaiting(), 10_050).unref?.()
    } else {
      this.deliver(sub)
    }
    return () => {
      this.x509Subs.delete(sub)
    }
  }

  private bundlesUpdate(): BundlesUpdate {
    const x509b = new Map<string, readonly Uint8Array[]>()
    const jwt = new Map<string, string>()
    if (this.bundle) {
      x509b.set(this.o.trustDomain.name, this.bundle.x509Authorities)
      const keys = (JSON.parse(this.bundle.toSpiffeJson()) as { keys: { use?: string }[] }).keys
        .filter((k) => k.use === 'jwt-svid')
        .map(({ use: _use, ...k }) => k)
      jwt.set(this.o.trustDomain.name, JSON.stringify({ keys }))
    }
    return { x509: x509b, jwt }
  }

  private notifyBundles(): void {
    const u = this.bundlesUpdate()
    for (const cb of this.bundleSubs) cb(u)
  }

  subscribeBundles(onUpdate: (u: BundlesUpdate) => void): () => void {
    this.bundleSubs.add(onUpdate)
    onUpdate(this.bundlesUpdate())
    return () => {
      this.bundleSubs.delete(onUpdate)
    }
  }

  async fetchJwtSvids(
    selectors: readonly Selector[],
    audience: readonly string[],
    spiffeId?: string,
  ): Promise<JwtSvidResult[]> {
    const bad = audienceProblem(audience)
    if (bad !== undefined) throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, bad)
    const aud = [...new Set(audience)].sort()
    const seen = new Set<string>()
    const entries = this.matching(new Set(selectors.map(sel))).filter((e) => {
      if (spiffeId !== undefined && e.spiffeId !== spiffeId) return false
      if (seen.has(e.spiffeId)) return false
      seen.add(e.spiffeId)
      return true
    })
    // Each identity on its own: one the server refuses must not cost the workload the others.
    const results = await Promise.allSettled(entries.map((e) => this.jwtFor(e, aud)))
    const out: JwtSvidResult[] = []
    let firstError: unknown
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        out.push(r.value)
        return
      }
      firstError ??= r.reason
      this.o.log('warn', 'could not get a JWT-SVID for one identity; serving the others', {
        entry: entries[i]!.id,
        spiffe_id: entries[i]!.spiffeId,
        error: (r.reason as Error)?.message ?? String(r.reason),
      })
    })
    if (out.length === 0 && firstError !== undefined) throw firstError
    return out
  }

  private async jwtFor(e: EntryMessage, aud: readonly string[]): Promise<JwtSvidResult> {
    const key = `${e.spiffeId}|${aud.join('\u0000')}`
    const cached = this.jwtCache.get(key)
    const now = this.now()
    if (cached && now < cached.issuedAt + (cached.expiresAt - cached.issuedAt) / 2) {
      return { spiffeId: cached.spiffeId, token: cached.token, hint: cached.hint }
    }
    try {
      const r = await this.o.client.call(
        'NewJWTSVID',
        { entryId: e.id, audience: [...aud] },
        this.auth(),
      )
      this.cacheJwt(key, {
        token: r.token,
        issuedAt: r.issuedAt * 1000,
        expiresAt: r.expiresAt * 1000,
        hint: r.hint,
        spiffeId: r.spiffeId,
      })
      return { spiffeId: r.spiffeId, token: r.token, hint: r.hint }
    } catch (err) {
      // The server is unreachable: an unexpired cached token is still valid (SPIRE does this too).
      if (cached && now < cached.expiresAt) {
        this.o.log('warn', 'serving a cached JWT-SVID: the server did not answer', {
          spiffe_id: e.spiffeId,
        })
        return { spiffeId: cached.spiffeId, token: cached.token, hint: cached.hint }
      }
      throw err
    }
  }

  /** Inserts as the newest slot, then drops the oldest until both the count and bytes caps hold. */
  private cacheJwt(key: string, v: Omit<CachedJwt, 'bytes'>): void {
    const max = this.o.jwtCacheMaxBytes ?? JWT_CACHE_DEFAULT_BYTES
    const bytes =
      JWT_CACHE_SLOT_OVERHEAD +
      Buffer.byteLength(key) +
      Buffer.byteLength(v.token) +
      Buffer.byteLength(v.spiffeId) +
      Buffer.byteLength(v.hint)
    this.dropJwt(key)
    if (bytes > max) return // larger than the whole cache: served, not kept
    this.jwtCache.set(key, { ...v, bytes })
    this.jwtCacheBytes += bytes
    while (this.jwtCache.size > JWT_CACHE_MAX_ENTRIES || this.jwtCacheBytes > max) {
      this.dropJwt(this.jwtCache.keys().next().value!)
    }
  }

  private dropJwt(key: string): void {
    const old = this.jwtCache.get(key)
    if (!old) return
    this.jwtCache.delete(key)
    this.jwtCacheBytes -= old.bytes
  }

  /** For tests and diagnostics: cached JWT-SVIDs and what they cost. */
  jwtCacheStats(): { entries: number; bytes: number; maxBytes: number } {
    return {
      entries: this.jwtCache.size,
      bytes: this.jwtCacheBytes,
      maxBytes: this.o.jwtCacheMaxBytes ?? JWT_CACHE_DEFAULT_BYTES,
    }
  }

  jwtBundle(td: TrustDomain): JwtBundle | undefined {
    return this.bundle && td.equals(this.o.trustDomain) ? this.bundle.jwtBundle() : undefined
  }

  // ------------------------------------------------------------ health and lifecycle

  health(): {
    ready: boolean
    agentId?: string
    lastSyncOk?: string
    failures: number
    lastError?: string
    agentExpiresAt?: string
  } {
    const h: ReturnType<AgentManager['health']> = {
      ready: this.agent !== undefined && this.agent.notAfter > this.now(),
      failures: this.failures,
    }
    if (this.agent) {
      h.agentId = this.agent.spiffeId
      h.agentExpiresAt = new Date(this.agent.notAfter).toISOString()
    }
    if (this.lastSyncOk) h.lastSyncOk = new Date(this.lastSyncOk).toISOString()
    if (this.lastError) h.lastError = this.lastError
    return h
  }

  /** For tests and diagnostics. */
  cachedSvidCount(): number {
    return this.svids.size
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    await this.syncing?.catch(() => undefined)
  }
}

function pkcs8(key: KeyObject): Uint8Array {
  return new Uint8Array(key.export({ type: 'pkcs8', format: 'der' }))
}
