/**
 * Workload X509-SVIDs: keys generated here (never sent), issued in batches for the entries that
 * need one, rotated at half-life ±10%, kept under a soft size limit that never evicts what someone
 * subscribes to, and pushed to Workload API subscribers when what they would see changes.
 */
import type { KeyObject } from 'node:crypto'
import type { Log } from '../../common/log.js'
import { generateSoftwareKeyPair, softwareKey } from '../../keymanager/memory.js'
import type { KeyType } from '../../keymanager/types.js'
import type { TrustBundle } from '../../spiffe/bundle.js'
import { createCsr } from '../../spiffe/csr.js'
import type { TrustDomain } from '../../spiffe/id.js'
import type { AgentAuth, NodeClient } from '../../transport/node-client.js'
import type { EntryMessage } from '../../transport/proto.js'
import type { Selector, WorkloadX509Svid, X509Update } from '../workload-api/types.js'
import { type EntrySync, sel } from './entries.js'
import { validity } from './identity.js'
import { rotationTime } from './rotation.js'
import type { PersistedSvid } from './sealed-svids.js'

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

const MAX_BATCH = 500

export interface X509Deps {
  readonly client: NodeClient
  readonly auth: () => AgentAuth
  readonly entries: EntrySync
  readonly bundle: () => TrustBundle | undefined
  /** The bundle of a federated trust domain, by name (undefined: none yet). */
  readonly federated: (td: string) => TrustBundle | undefined
  readonly trustDomain: TrustDomain
  readonly workloadKeyType: KeyType
  readonly cacheMaxSize: number
  readonly log: Log
  readonly now: () => number
  readonly random: () => number
  /** Starts a sync now (a subscriber waits for SVIDs not issued yet). */
  readonly requestSync: () => void
  /** SPIRE's availability_target in ms (0: half-life rotation). */
  readonly availabilityTargetMs: number
  /** Called when the set of SVIDs changed (the sealed cache is rewritten). */
  readonly onChange?: () => void
}

export class X509SvidCache {
  private readonly d: X509Deps
  private readonly svids = new Map<string, CachedSvid>()
  /** Entries the server refused to issue an X509-SVID for, by id → the entry revision refused. */
  private readonly issueRefused = new Map<string, number>()
  private readonly subs = new Set<X509Sub>()
  /** Entries already warned about a TTL too short for the availability target. */
  private readonly warnedShort = new Set<string>()

  constructor(d: X509Deps) {
    this.d = d
  }

  private rotateAt(entryId: string, spiffeId: string, notBefore: number, notAfter: number): number {
    const r = rotationTime(
      this.d.now(),
      notBefore,
      notAfter,
      this.d.random,
      this.d.availabilityTargetMs,
    )
    if (r.short && !this.warnedShort.has(entryId) && this.warnedShort.size < 10_000) {
      this.warnedShort.add(entryId)
      this.d.log(
        'warn',
        // SPIRE's warning at sync (the node API cannot ask for a TTL: the entry's TTL decides).
        "X509 SVID lifetime isn't long enough to guarantee the availability_target; rotating at half-life",
        {
          code: 'ERR_AVAILABILITY_TARGET_UNMET',
          entry: entryId,
          spiffe_id: spiffeId,
          ttl_seconds: Math.round((notAfter - Math.max(notBefore, this.d.now())) / 1000),
          availability_target_seconds: Math.round(this.d.availabilityTargetMs / 1000),
          remedy:
            'give the entry an x509_svid_ttl of at least 2 x availability_target (or lower the target)',
        },
      )
    }
    return r.at
  }

  /** What the sealed cache keeps: every SVID held, with its key. */
  snapshot(): PersistedSvid[] {
    return [...this.svids.values()].map((s) => ({
      entryId: s.entryId,
      spiffeId: s.spiffeId,
      chain: s.chain,
      privateKey: s.privateKey,
      hint: s.hint,
      entryRevision: s.entryRevision,
    }))
  }

  /** SVIDs from the sealed cache, for entries we still hold at the same revision. */
  restore(records: readonly PersistedSvid[]): number {
    let n = 0
    for (const r of records) {
      const e = this.d.entries.entries.get(r.entryId)
      if (!e || e.revisionNumber !== r.entryRevision || e.spiffeId !== r.spiffeId) continue
      const v = validity(r.chain[0]!)
      this.svids.set(r.entryId, {
        ...r,
        hint: e.hint,
        notAfter: v.notAfter,
        rotateAt: this.rotateAt(r.entryId, r.spiffeId, v.notBefore, v.notAfter),
        lastAccess: this.d.now(),
      })
      n++
    }
    return n
  }

  /** The soonest expiry among the SVIDs held (health: how long the cache lasts). */
  firstExpiry(): number | undefined {
    let first: number | undefined
    for (const s of this.svids.values())
      if (first === undefined || s.notAfter < first) first = s.notAfter
    return first
  }

  /** The soonest expiry among SVIDs already due for rotation (the retry loop must beat it). */
  overdueExpiry(now: number): number | undefined {
    let first: number | undefined
    for (const s of this.svids.values()) {
      if (s.rotateAt <= now && (first === undefined || s.notAfter < first)) first = s.notAfter
    }
    return first
  }

  get size(): number {
    return this.svids.size
  }

  /** The cached SVIDs and their own bytes (certificate chains and private keys). */
  stats(): { entries: number; bytes: number } {
    let bytes = 0
    for (const s of this.svids.values()) {
      bytes += s.privateKey.byteLength
      for (const c of s.chain) bytes += c.byteLength
    }
    return { entries: this.svids.size, bytes }
  }

  /** The soonest rotation still ahead, if any (the sync loop wakes for it). */
  nextRotation(now: number): number | undefined {
    let next: number | undefined
    for (const s of this.svids.values()) {
      if (s.rotateAt > now && (next === undefined || s.rotateAt < next)) next = s.rotateAt
    }
    return next
  }

  clear(): void {
    this.svids.clear()
    this.d.onChange?.()
  }

  /** After an entry sync changed the entries: forget what belongs to deleted ones, tell watchers. */
  entriesChanged(): void {
    const entries = this.d.entries.entries
    let dropped = false
    for (const id of [...this.svids.keys()]) {
      if (!entries.has(id)) dropped = this.svids.delete(id) || dropped
    }
    if (dropped) this.d.onChange?.()
    for (const id of [...this.issueRefused.keys()]) {
      if (!entries.has(id)) this.issueRefused.delete(id)
    }
    this.notify()
  }

  /** Which entries need a (new) SVID: missing, due for rotation, or their entry changed. */
  private dueEntries(): EntryMessage[] {
    const now = this.d.now()
    const subscribed = this.subscribedEntryIds()
    const due: EntryMessage[] = []
    for (const e of this.d.entries.entries.values()) {
      const have = this.svids.get(e.id)
      if (!have) {
        // Soft cache limit: past it, only entries someone is waiting for get SVIDs ahead of time.
        if (this.svids.size >= this.d.cacheMaxSize && !subscribed.has(e.id)) continue
        due.push(e)
      } else if (now >= have.rotateAt || have.entryRevision !== e.revisionNumber) due.push(e)
    }
    return due
  }

  /** Issues what is due (BatchNewX509SVID, ≤ MAX_BATCH a call), applies the size limit. */
  async sync(): Promise<number> {
    const due = this.dueEntries()
    const type = this.d.workloadKeyType
    for (let i = 0; i < due.length; i += MAX_BATCH) {
      const batch = due.slice(i, i + MAX_BATCH)
      const keys = await Promise.all(batch.map(() => generateSoftwareKeyPair(type)))
      const csrs = await Promise.all(
        keys.map((k, j) => createCsr(softwareKey(`w${j}`, type, k.privateKey, k.publicKey))),
      )
      const r = await this.d.client.call(
        'BatchNewX509SVID',
        { params: batch.map((e, j) => ({ entryId: e.id, csr: csrs[j]! })) },
        this.d.auth(),
      )
      r.results.forEach((res, j) => {
        const e = batch[j]!
        if (res.status !== 0 || !res.svid) {
          // Remembered so watchers of this entry's workloads are not kept waiting for it; the
          // next sync asks again (the server may have been fixed meanwhile).
          this.issueRefused.set(e.id, e.revisionNumber)
          this.d.log('warn', 'the server did not issue an SVID', {
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
          rotateAt: this.rotateAt(e.id, res.svid.spiffeId, v.notBefore, v.notAfter),
          lastAccess: this.d.now(),
        })
      })
    }
    this.evict()
    if (due.length > 0) {
      this.notify()
      this.d.onChange?.()
    }
    return due.length // how many were due: the manager trims the heap after a large sync
  }

  /** Soft limit: drop least recently used SVIDs nobody subscribes to (SPIRE's LRU semantics). */
  private evict(): void {
    const over = this.svids.size - this.d.cacheMaxSize
    if (over <= 0) return
    const subscribed = this.subscribedEntryIds()
    const victims = [...this.svids.values()]
      .filter((s) => !subscribed.has(s.entryId))
      .sort((a, b) => a.lastAccess - b.lastAccess)
      .slice(0, over)
    for (const v of victims) this.svids.delete(v.entryId)
  }

  private subscribedEntryIds(): Set<string> {
    const out = new Set<string>()
    for (const sub of this.subs)
      for (const e of this.d.entries.matching(sub.selectors)) out.add(e.id)
    return out
  }

  private update(
    selectors: ReadonlySet<string>,
    matched: readonly EntryMessage[] = this.d.entries.matching(selectors),
  ): X509Update {
    const now = this.d.now()
    const svids: WorkloadX509Svid[] = []
    const bundles = new Map<string, readonly Uint8Array[]>()
    for (const e of matched) {
      // The federated bundles these identities may use: those their entries federate with.
      for (const f of e.federatesWith) {
        const name = f.startsWith('spiffe://') ? f.slice(9) : f
        const fb = name === this.d.trustDomain.name ? undefined : this.d.federated(name)
        if (fb) bundles.set(name, fb.x509Authorities)
      }
      const s = this.svids.get(e.id)
      if (!s || s.notAfter <= now) continue
      s.lastAccess = now
      svids.push(s)
    }
    const bundle = this.d.bundle()
    if (bundle) bundles.set(this.d.trustDomain.name, bundle.x509Authorities)
    return { svids, bundles }
  }

  private fingerprint(u: X509Update): string {
    let fed = ''
    // Federated bundles are rare: skip the sort and join when only our own is there.
    if (u.bundles.size > (u.bundles.has(this.d.trustDomain.name) ? 1 : 0)) {
      fed = [...u.bundles.keys()]
        .filter((td) => td !== this.d.trustDomain.name)
        .sort()
        .map(
          (td) => `${td}@${this.d.federated(td)?.sequence ?? 0}:${u.bundles.get(td)?.length ?? 0}`,
        )
        .join(',')
    }
    let ids = ''
    for (const s of u.svids) ids += `${ids === '' ? '' : ','}${svidKey(s)}`
    return `${this.d.bundle()?.sequence ?? 0}|${fed}|${ids}`
  }

  private deliver(sub: X509Sub, matched?: readonly EntryMessage[]): void {
    const u = this.update(sub.selectors, matched)
    const fp = this.fingerprint(u)
    if (fp === sub.last) return
    sub.last = fp
    sub.cb(u)
  }

  /** Sends every subscriber (not still waiting) what changed for it. */
  notify(): void {
    for (const sub of this.subs) if (sub.waitingUntil === undefined) this.deliver(sub)
  }

  /**
   * Whether an entry of these selectors still lacks an SVID that may yet come. One the server
   * refused (at this revision) will not come soon: waiting for it would delay the others.
   */
  private awaitsSvids(
    selectors: ReadonlySet<string>,
    matched: readonly EntryMessage[] = this.d.entries.matching(selectors),
  ): boolean {
    const now = this.d.now()
    // An expired SVID (restored from the sealed cache, or outlived an outage) is as good as none.
    const usable = (id: string) => (this.svids.get(id)?.notAfter ?? 0) > now
    return matched.some((e) => !usable(e.id) && this.issueRefused.get(e.id) !== e.revisionNumber)
  }

  /** Subscriptions waiting for SVIDs get their first update once they exist, or when time is up. */
  flushWaiting(): void {
    const now = this.d.now()
    for (const sub of this.subs) {
      if (sub.waitingUntil === undefined) continue
      if (!this.awaitsSvids(sub.selectors) || now >= sub.waitingUntil) {
        sub.waitingUntil = undefined
        this.deliver(sub)
      }
    }
  }

  subscribe(selectors: readonly Selector[], onUpdate: (u: X509Update) => void): () => void {
    const sub: X509Sub = {
      selectors: new Set(selectors.map(sel)),
      cb: onUpdate,
      last: undefined,
      waitingUntil: undefined,
    }
    this.subs.add(sub)
    // One match for both questions below (a new stream asks both at once).
    const matched = this.d.entries.matching(sub.selectors)
    if (this.awaitsSvids(sub.selectors, matched)) {
      // Entries match but their SVIDs are not issued yet (cache limit, new entry): fetch now and
      // answer when they arrive, rather than telling the workload it has no identity.
      sub.waitingUntil = this.d.now() + 10_000
      this.d.requestSync()
      setTimeout(() => this.flushWaiting(), 10_050).unref?.()
    } else {
      this.deliver(sub, matched)
    }
    return () => {
      this.subs.delete(sub)
    }
  }
}

/**
 * An SVID's part of a subscriber's fingerprint: its entry and the last bytes of its leaf (the
 * signature). Kept per SVID object, which the cache never mutates: hex-encoding the leaf on
 * every delivery was a measurable share of each FetchX509SVID in the profile.
 */
const svidKeys = new WeakMap<WorkloadX509Svid, string>()
function svidKey(s: WorkloadX509Svid): string {
  let k = svidKeys.get(s)
  if (k === undefined) {
    k = `${s.entryId}:${Buffer.from(s.chain[0]!).subarray(-16).toString('hex')}`
    svidKeys.set(s, k)
  }
  return k
}

function pkcs8(key: KeyObject): Uint8Array {
  return new Uint8Array(key.export({ type: 'pkcs8', format: 'der' }))
}
