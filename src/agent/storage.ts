/**
 * The agent's state in SQLite in its data dir (agent.sqlite3), so a restart neither re-attests nor
 * stops serving: the agent SVID chain, whether it can re-attest, the bundle, the entry revision and
 * entries, and when a sync last succeeded. Workload SVIDs and their keys are not here: they are in
 * the sealed cache (cache/sealed-svids.ts), encrypted under a key the TPM (or a 0600 key file) wraps. A database that is not readable is moved aside with a clear log line
 * and the agent starts over (re-attesting, which is safe where the attestor allows it).
 */

import { closeSync, existsSync, mkdirSync, openSync, renameSync } from 'node:fs'
import { dirname } from 'node:path'
import { loadBetterSqlite3 } from '../common/sqlite.js'
import { SpiffeEdgeError } from '../errors.js'
import { nodeCertFromDer } from '../spiffe/x509-cert.js'

type Db = InstanceType<ReturnType<typeof loadBetterSqlite3>>

export interface AgentState {
  /** DER certificates, leaf first. */
  agentSvid?: Uint8Array[]
  agentSpiffeId?: string
  reattestable?: boolean
  /** SPIFFE bundle JSON. */
  bundle?: string
  revision?: number
  /** The authorized entries as last synced (JSON of EntryMessage[]). */
  entries?: string
  /** The agent SVID key's id in the key manager. */
  agentKeyId?: string
  /** When a sync last succeeded (ms since the epoch): how long an outage has lasted, across restarts. */
  lastSyncOk?: number
  /** Federated bundles as last synced: JSON of [{trustDomain, bundle (SPIFFE JSON)}]. */
  federatedBundles?: string
}

export class AgentStorage {
  private readonly db: Db
  readonly path: string

  private constructor(db: Db, path: string) {
    this.db = db
    this.path = path
  }

  /**
   * Opens the state database; one that does not open or fails its integrity check is renamed to
   * `<file>.corrupt-<time>` and a new one is started (returned with `recovered: true`).
   */
  static open(path: string): { storage: AgentStorage; recovered: boolean } {
    const ctor = loadBetterSqlite3()
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    const tryOpen = () => {
      if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600))
      const db = new ctor(path)
      try {
        db.pragma('journal_mode = WAL')
        // Losing the last write of agent state only costs a re-sync; FULL is not needed here.
        db.pragma('synchronous = NORMAL')
        const check = db.pragma('quick_check', { simple: true })
        if (check !== 'ok') throw new Error(`integrity check: ${String(check)}`)
        db.exec('CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value BLOB NOT NULL)')
        // Rows that SQLite reads fine but we cannot (a bad write, a hand edit) count as corrupt
        // too: better moved aside now than a TypeError at every start.
        readState(db)
        return db
      } catch (err) {
        db.close()
        throw err
      }
    }
    try {
      return { storage: new AgentStorage(tryOpen(), path), recovered: false }
    } catch (err) {
      const aside = `${path}.corrupt-${Date.now()}`
      try {
        renameSync(path, aside)
      } catch (renameErr) {
        throw new SpiffeEdgeError(
          'ERR_AGENT_STATE',
          `agent state ${path} is unreadable and cannot be moved aside`,
          {
            cause: renameErr,
            remedy: `remove ${path} by hand (the agent will attest again)`,
          },
        )
      }
      try {
        return { storage: new AgentStorage(tryOpen(), path), recovered: true }
      } catch (err2) {
        throw new SpiffeEdgeError(
          'ERR_AGENT_STATE',
          `cannot create agent state ${path}: ${(err2 as Error).message}`,
          {
            cause: err,
            remedy: 'check that the data dir is writable',
          },
        )
      }
    }
  }

  /** The saved state; every field was checked when the database was opened. */
  load(): AgentState {
    return readState(this.db)
  }

  /** Writes the given fields in one transaction. */
  save(s: AgentState): void {
    const put = this.db.prepare(
      'INSERT INTO state (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value',
    )
    const values: [string, string][] = []
    if (s.agentSvid)
      values.push([
        'agent_svid',
        JSON.stringify(s.agentSvid.map((c) => Buffer.from(c).toString('base64'))),
      ])
    if (s.agentSpiffeId !== undefined) values.push(['agent_spiffe_id', s.agentSpiffeId])
    if (s.reattestable !== undefined) values.push(['reattestable', String(s.reattestable)])
    if (s.bundle !== undefined) values.push(['bundle', s.bundle])
    if (s.revision !== undefined) values.push(['revision', String(s.revision)])
    if (s.entries !== undefined) values.push(['entries', s.entries])
    if (s.agentKeyId !== undefined) values.push(['agent_key_id', s.agentKeyId])
    if (s.lastSyncOk !== undefined) values.push(['last_sync_ok', String(s.lastSyncOk)])
    if (s.federatedBundles !== undefined) values.push(['federated_bundles', s.federatedBundles])
    this.db.transaction(() => {
      for (const [k, v] of values) put.run(k, Buffer.from(v, 'utf8'))
    })()
  }

  /** Forgets the agent identity (after eviction or a ban): the next start attests again. */
  clearIdentity(): void {
    this.db
      .prepare(
        "DELETE FROM state WHERE name IN ('agent_svid','agent_spiffe_id','reattestable','revision','entries','federated_bundles')",
      )
      .run()
  }

  close(): void {
    this.db.close()
  }
}

/** Reads and checks every field; throws on anything that is not what save() writes. */
function readState(db: Db): AgentState {
  const rows = db.prepare('SELECT name, value FROM state').all() as {
    name: string
    value: Buffer
  }[]
  const m = new Map(rows.map((r) => [r.name, r.value]))
  const text = (k: string) => m.get(k)?.toString('utf8')
  const bad = (k: string, why: string) => new Error(`state field ${k}: ${why}`)
  const json = (k: string, v: string): unknown => {
    try {
      return JSON.parse(v)
    } catch {
      throw bad(k, 'not JSON')
    }
  }
  const out: AgentState = {}
  const chain = text('agent_svid')
  if (chain) {
    const list = json('agent_svid', chain)
    if (!Array.isArray(list) || list.length === 0 || !list.every((b) => typeof b === 'string'))
      throw bad('agent_svid', 'not a list of base64 certificates')
    out.agentSvid = list.map((b: string) => new Uint8Array(Buffer.from(b, 'base64')))
    // A chain that does not parse would fail later, in the middle of start().
    for (const c of out.agentSvid) nodeCertFromDer(c)
  }
  const id = text('agent_spiffe_id')
  if (id) out.agentSpiffeId = id
  const re = text('reattestable')
  if (re) {
    if (re !== 'true' && re !== 'false') throw bad('reattestable', 'not true/false')
    out.reattestable = re === 'true'
  }
  const bundle = text('bundle')
  if (bundle) {
    const b = json('bundle', bundle) as { keys?: unknown } | null
    if (typeof b !== 'object' || b === null || !Array.isArray(b.keys))
      throw bad('bundle', 'not a SPIFFE bundle')
    out.bundle = bundle
  }
  const rev = text('revision')
  if (rev) {
    const n = Number(rev)
    if (!Number.isSafeInteger(n) || n < 0) throw bad('revision', 'not a revision number')
    out.revision = n
  }
  const entries = text('entries')
  if (entries) {
    const list = json('entries', entries)
    const ok =
      Array.isArray(list) &&
      list.every(
        (e: { id?: unknown; revisionNumber?: unknown; selectors?: unknown }) =>
          typeof e === 'object' &&
          e !== null &&
          typeof e.id === 'string' &&
          typeof e.revisionNumber === 'number' &&
          Array.isArray(e.selectors),
      )
    if (!ok) throw bad('entries', 'not a list of entries')
    out.entries = entries
  }
  const keyId = text('agent_key_id')
  if (keyId) out.agentKeyId = keyId
  const lastOk = text('last_sync_ok')
  if (lastOk) {
    const n = Number(lastOk)
    if (!Number.isSafeInteger(n) || n < 0) throw bad('last_sync_ok', 'not a time')
    out.lastSyncOk = n
  }
  const fed = text('federated_bundles')
  if (fed) {
    const list = json('federated_bundles', fed)
    const ok =
      Array.isArray(list) &&
      list.every(
        (f: { trustDomain?: unknown; bundle?: unknown }) =>
          typeof f === 'object' &&
          f !== null &&
          typeof f.trustDomain === 'string' &&
          typeof f.bundle === 'string',
      )
    if (!ok) throw bad('federated_bundles', 'not a list of bundles')
    out.federatedBundles = fed
  }
  return out
}
