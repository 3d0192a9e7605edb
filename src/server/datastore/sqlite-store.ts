/**
 * The SQLite Datastore: one connection, every call wrapped so a closed store refuses it and SQLite
 * errors come out as ERR_DATASTORE_*. The table work is in sqlite-entries, -nodes and -tokens.
 */
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'
import * as entries from './sqlite-entries.js'
import { checkIntegrity, closedError, mapError } from './sqlite-errors.js'
import * as federated from './sqlite-federated.js'
import * as nodes from './sqlite-nodes.js'
import * as nonces from './sqlite-nonces.js'
import * as rounds from './sqlite-rounds.js'
import { prepareStatements, type SqliteContext, unsynced } from './sqlite-statements.js'
import * as tokens from './sqlite-tokens.js'
import type {
  AttestedNode,
  Datastore,
  EntryChanges,
  EntryFilter,
  EntryInput,
  FederatedBundleRow,
  FederationRelationshipRow,
  JoinTokenInput,
  RegistrationEntry,
} from './types.js'

/** quick_check reads every page: bounded to once per interval however often health is asked. */
const HEALTH_CHECK_INTERVAL_MS = 5000
/** Claims committed in one transaction at most (bounds the write lock's hold time). */
const MAX_CLAIM_BATCH = 256

export class SqliteDatastore implements Datastore {
  #db: BetterSqlite3.Database
  #c: SqliteContext
  #closed = false
  /** Sticky: once SQLite reports corruption, health fails until the store is restored. */
  #corruption: SpiffeEdgeError | undefined
  #checkedAt = 0

  constructor(db: BetterSqlite3.Database) {
    this.#db = db
    this.#c = {
      db,
      st: prepareStatements(db),
      listCache: new Map(),
      write: (fn) => db.transaction(fn).immediate(),
    }
  }

  async createEntry(e: EntryInput): Promise<RegistrationEntry> {
    return this.#op('create entry', () => entries.createEntry(this.#c, e))
  }

  async updateEntry(id: string, e: EntryInput): Promise<RegistrationEntry> {
    return this.#op('update entry', () => entries.updateEntry(this.#c, id, e))
  }

  async deleteEntry(id: string): Promise<void> {
    return this.#op('delete entry', () => entries.deleteEntry(this.#c, id))
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    return this.#op('get entry', () => entries.getEntry(this.#c, id))
  }

  async listEntries(filter: EntryFilter = {}): Promise<RegistrationEntry[]> {
    return this.#op('list entries', () => entries.listEntries(this.#c, filter))
  }

  async entryChangesSince(revision: number): Promise<EntryChanges> {
    return this.#op('read entry changes', () => entries.entryChangesSince(this.#c, revision))
  }

  async currentRevision(): Promise<number> {
    return this.#op('read revision', () => entries.currentRevision(this.#c))
  }

  async pruneExpiredEntries(now: number): Promise<number> {
    return this.#op('prune expired entries', () => entries.pruneExpiredEntries(this.#c, now))
  }

  async pruneEntryTombstones(throughRevision: number): Promise<number> {
    return this.#op('prune entry tombstones', () =>
      entries.pruneEntryTombstones(this.#c, throughRevision),
    )
  }

  async createAttestedNode(n: AttestedNode): Promise<void> {
    return this.#op('create attested node', () => nodes.createAttestedNode(this.#c, n))
  }

  async getAttestedNode(spiffeId: string): Promise<AttestedNode | undefined> {
    return this.#op('get attested node', () => nodes.getAttestedNode(this.#c, spiffeId))
  }

  async updateAttestedNode(spiffeId: string, patch: Partial<AttestedNode>): Promise<AttestedNode> {
    return this.#op('update attested node', () =>
      nodes.updateAttestedNode(this.#c, spiffeId, patch),
    )
  }

  async listAttestedNodes(): Promise<AttestedNode[]> {
    return this.#op('list attested nodes', () => nodes.listAttestedNodes(this.#c))
  }

  async deleteAttestedNode(spiffeId: string): Promise<void> {
    return this.#op('delete attested node', () => nodes.deleteAttestedNode(this.#c, spiffeId))
  }

  async createJoinToken(t: JoinTokenInput): Promise<void> {
    return this.#op('create join token', () => tokens.createJoinToken(this.#c, t))
  }

  async consumeJoinToken(
    tokenHash: string,
    now: number,
  ): Promise<{ spiffeId?: string } | undefined> {
    return this.#op('consume join token', () => tokens.consumeJoinToken(this.#c, tokenHash, now))
  }

  async consumeJoinTokenForAgent(
    tokenHash: string,
    now: number,
    agentId: string,
  ): Promise<{ spiffeId?: string; aliasEntryId?: string } | undefined> {
    return this.#op('consume join token', () =>
      tokens.consumeJoinTokenForAgent(this.#c, tokenHash, now, agentId),
    )
  }

  async pruneJoinTokens(now: number): Promise<number> {
    return this.#op('prune join tokens', () => tokens.pruneJoinTokens(this.#c, now))
  }

  async getBundle(trustDomain: string): Promise<{ json: string; sequence: number } | undefined> {
    return this.#op('get bundle', () => tokens.getBundle(this.#c, trustDomain))
  }

  async setBundle(trustDomain: string, json: string, sequence: number): Promise<void> {
    return this.#op('set bundle', () => tokens.setBundle(this.#c, trustDomain, json, sequence))
  }

  async getFederatedBundle(trustDomain: string): Promise<FederatedBundleRow | undefined> {
    return this.#op('get federated bundle', () => federated.get(this.#c, trustDomain))
  }

  async setFederatedBundle(trustDomain: string, json: string, sequence: number): Promise<void> {
    return this.#op('set federated bundle', () =>
      federated.set(this.#c, trustDomain, json, sequence),
    )
  }

  async listFederatedBundles(): Promise<FederatedBundleRow[]> {
    return this.#op('list federated bundles', () => federated.list(this.#c))
  }

  async deleteFederatedBundle(trustDomain: string): Promise<void> {
    return this.#op('delete federated bundle', () => federated.remove(this.#c, trustDomain))
  }

  async getFederationRelationship(
    trustDomain: string,
  ): Promise<FederationRelationshipRow | undefined> {
    return this.#op('get federation relationship', () =>
      federated.getRelationship(this.#c, trustDomain),
    )
  }

  async listFederationRelationships(): Promise<FederationRelationshipRow[]> {
    return this.#op('list federation relationships', () => federated.listRelationships(this.#c))
  }

  async createFederationRelationship(
    r: federated.FederationRelationshipInput,
    limit: number,
  ): Promise<FederationRelationshipRow> {
    return this.#op('create federation relationship', () =>
      federated.createRelationship(this.#c, r, limit),
    )
  }

  async updateFederationRelationship(
    r: federated.FederationRelationshipInput,
  ): Promise<FederationRelationshipRow> {
    return this.#op('update federation relationship', () =>
      federated.updateRelationship(this.#c, r),
    )
  }

  async deleteFederationRelationship(trustDomain: string): Promise<void> {
    return this.#op('delete federation relationship', () =>
      federated.removeRelationship(this.#c, trustDomain),
    )
  }

  async getJournal(name: string): Promise<string | undefined> {
    return this.#op('get CA journal', () => tokens.getJournal(this.#c, name))
  }

  async saveAttestation(node: AttestedNode, journal: ReadonlyMap<string, string>): Promise<void> {
    return this.#op('save attestation', () =>
      this.#c.write(() => {
        const stored = nodes.getAttestedNode(this.#c, node.spiffeId)
        if (stored?.banned)
          throw new SpiffeEdgeError('ERR_DATASTORE_CONFLICT', `agent ${node.spiffeId} is banned`, {
            remedy: 'evict the agent (server agent evict) to let it attest again',
          })
        for (const [name, value] of journal) tokens.setJournal(this.#c, name, value)
        if (stored) {
          nodes.updateAttestedNode(this.#c, node.spiffeId, node)
        } else {
          nodes.createAttestedNode(this.#c, node)
        }
      }),
    )
  }

  async setJournal(name: string, value: string): Promise<void> {
    return this.#op('set CA journal', () => tokens.setJournal(this.#c, name, value))
  }

  /**
   * Claims wait for the end of this turn of the event loop and commit together: one IMMEDIATE
   * transaction (one fsync) for every claim made meanwhile, each in its own savepoint, so one
   * refused claim does not undo the others. Still atomic across processes, and still durable
   * before any caller learns its claim was taken, unless every claim of the batch asked for
   * `sync: false` (see Datastore.claimNonce): then the batch commits without an fsync.
   */
  claimNonce(
    key: string,
    digest: string,
    expiresAtMs: number,
    nowMs: number,
    o: { readonly sync?: boolean } = {},
  ): Promise<{ digest: string; answer?: Uint8Array } | undefined> {
    return new Promise((resolve, reject) => {
      const sync = o.sync !== false
      this.#claims.push({ key, digest, expiresAtMs, nowMs, sync, resolve, reject })
      if (this.#claims.length === 1) setImmediate(() => this.#flushClaims())
    })
  }

  #claims: {
    key: string
    digest: string
    expiresAtMs: number
    nowMs: number
    sync: boolean
    resolve: (v: { digest: string; answer?: Uint8Array } | undefined) => void
    reject: (e: unknown) => void
  }[] = []

  #flushClaims(): void {
    const batch = this.#claims.splice(0, MAX_CLAIM_BATCH)
    if (this.#claims.length > 0) setImmediate(() => this.#flushClaims())
    let results: ({ ok: ReturnType<typeof nonces.claimNonce> } | { err: unknown })[]
    const commit = () =>
      this.#c.write(() =>
        batch.map((b) => {
          try {
            return { ok: nonces.claimNonce(this.#c, b.key, b.digest, b.expiresAtMs, b.nowMs) }
          } catch (err) {
            return { err }
          }
        }),
      )
    try {
      results = this.#op('claim nonce', () =>
        batch.some((b) => b.sync) ? commit() : unsynced(this.#c, commit),
      )
    } catch (err) {
      for (const b of batch) b.reject(err)
      return
    }
    results.forEach((r, i) => {
      if ('ok' in r) batch[i]!.resolve(r.ok)
      else batch[i]!.reject(mapError(r.err, 'claim nonce'))
    })
  }

  async setNonceAnswer(key: string, answer: Uint8Array): Promise<void> {
    return this.#op('set nonce answer', () => nonces.setNonceAnswer(this.#c, key, answer))
  }

  async releaseNonce(key: string, digest: string): Promise<void> {
    return this.#op('release nonce', () => nonces.releaseNonce(this.#c, key, digest))
  }

  async pruneNonces(nowMs: number): Promise<number> {
    return this.#op('prune nonces', () => nonces.pruneNonces(this.#c, nowMs))
  }

  async putAttestRound(
    key: string,
    round: number,
    state: Uint8Array,
    expiresAtMs: number,
    nowMs: number,
  ): Promise<void> {
    return this.#op('put attestation round', () =>
      rounds.putAttestRound(this.#c, key, round, state, expiresAtMs, nowMs),
    )
  }

  async takeAttestRound(
    key: string,
    round: number,
    nowMs: number,
  ): Promise<Uint8Array | undefined> {
    return this.#op('take attestation round', () =>
      rounds.takeAttestRound(this.#c, key, round, nowMs),
    )
  }

  async pruneAttestRounds(nowMs: number): Promise<number> {
    return this.#op('prune attestation rounds', () => rounds.pruneAttestRounds(this.#c, nowMs))
  }

  async healthCheck(): Promise<{ ok: true } | { ok: false; error: SpiffeEdgeError }> {
    if (this.#closed) return { ok: false, error: closedError('check health') }
    const now = Date.now()
    if (!this.#corruption && now - this.#checkedAt >= HEALTH_CHECK_INTERVAL_MS) {
      this.#checkedAt = now
      try {
        // Drop cached pages so the check reads the file, not what this process remembers.
        this.#db.pragma('shrink_memory')
        checkIntegrity(this.#db, 'quick_check(5)')
      } catch (err) {
        const mapped = mapError(err, 'check the datastore')
        if (mapped instanceof SpiffeEdgeError && mapped.code === 'ERR_DATASTORE_CORRUPT')
          this.#corruption = mapped
        else return { ok: false, error: mapped as SpiffeEdgeError }
      }
    }
    return this.#corruption ? { ok: false, error: this.#corruption } : { ok: true }
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#db.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  /** Runs one operation with the closed check and SQLite errors mapped to ERR_DATASTORE_*. */
  #op<T>(what: string, fn: () => T): T {
    if (this.#closed) throw closedError(what)
    try {
      return fn()
    } catch (err) {
      const mapped = mapError(err, what)
      if (mapped instanceof SpiffeEdgeError && mapped.code === 'ERR_DATASTORE_CORRUPT')
        this.#corruption ??= mapped
      throw mapped
    }
  }
}
