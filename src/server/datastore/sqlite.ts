/**
 * SQLite datastore on better-sqlite3. better-sqlite3 is synchronous, so each method body runs to
 * completion without yielding: in-process callers never interleave, and multi-statement writes run
 * in BEGIN IMMEDIATE transactions so other processes on the same file serialize on the write lock.
 */
import { randomUUID } from 'node:crypto'
import { chmodSync, closeSync, existsSync, fchmodSync, mkdirSync, openSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, resolve } from 'node:path'
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'
import { LATEST_SCHEMA_VERSION, migrations } from './migrations.js'
import type {
  AttestedNode,
  Datastore,
  EntryChanges,
  EntryFilter,
  EntryInput,
  JoinTokenInput,
  RegistrationEntry,
  Selector,
} from './types.js'
import {
  checkInt,
  checkJson,
  checkNonEmpty,
  invalid,
  selectorKey,
  validateAttestedNode,
  validateEntryInput,
  validateJoinToken,
} from './validate.js'

type Db = BetterSqlite3.Database
type DbConstructor = typeof BetterSqlite3

export interface SqliteDatastoreOptions {
  /** How long a write waits for another process's lock before ERR_DATASTORE_BUSY (5000). */
  readonly busyTimeoutMs?: number
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000
const TOMBSTONE_HORIZON = 'tombstones_pruned_through'
/** quick_check reads every page: bounded to once per interval however often health is asked. */
const HEALTH_CHECK_INTERVAL_MS = 5000

let cachedConstructor: DbConstructor | undefined

/**
 * Loads better-sqlite3 and its native addon, or throws ERR_DATASTORE_UNAVAILABLE (never a bare
 * MODULE_NOT_FOUND or dlopen error). Lazy, like the TPM addon: only the server needs it.
 */
export function loadBetterSqlite3(): DbConstructor {
  if (cachedConstructor) return cachedConstructor
  const require = createRequire(import.meta.url)
  try {
    const ctor = require('better-sqlite3') as DbConstructor
    // The addon is dlopen'ed on first construction: force it here so a missing or ABI-mismatched
    // build is reported as unavailable, not as a confusing failure to open the database.
    new ctor(':memory:').close()
    cachedConstructor = ctor
    return ctor
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err)
    throw new SpiffeEdgeError(
      'ERR_DATASTORE_UNAVAILABLE',
      `better-sqlite3 could not be loaded: ${why}`,
      {
        cause: err,
        remedy: `run npm install (or scripts/install.sh) so better-sqlite3 is built for this Node (${process.version})`,
      },
    )
  }
}

/**
 * Opens (creating if needed) an on-disk datastore and brings its schema up to date. The directory
 * is created 0700 if missing; the database, -wal and -shm files are 0600.
 */
export async function openSqliteDatastore(
  path: string,
  opts: SqliteDatastoreOptions = {},
): Promise<Datastore> {
  const ctor = loadBetterSqlite3()
  const busyTimeoutMs = opts.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS
  checkInt('busyTimeoutMs', busyTimeoutMs, 0)
  checkNonEmpty('path', path)
  // URI filenames could smuggle in options (mode=ro, vfs=...) that bypass the settings below.
  if (path.startsWith('file:')) throw invalid('path must be a file path, not a file: URI')
  const memory = path === ':memory:'
  const file = memory ? path : resolve(path)
  let db: Db
  try {
    if (!memory) prepareFiles(file)
    db = new ctor(file, { timeout: busyTimeoutMs })
  } catch (err) {
    throw mapError(err, `open ${file}`)
  }
  try {
    configure(db, memory, busyTimeoutMs)
    // Mid-file damage can leave the header and schema readable: check every page before serving.
    if (!memory) checkIntegrity(db, 'integrity_check(20)')
    migrate(db)
    if (!memory) tightenSidecars(file)
    return new SqliteDatastore(db)
  } catch (err) {
    db.close()
    throw mapError(err, `open ${file}`)
  }
}

/** Same code on ':memory:': for unit tests and throwaway servers. */
export function openMemoryDatastore(opts: SqliteDatastoreOptions = {}): Promise<Datastore> {
  return openSqliteDatastore(':memory:', opts)
}

function prepareFiles(file: string): void {
  const dir = dirname(file)
  // Only a directory we create is forced to 0700: chmod'ing an existing one (say /tmp) is not ours.
  if (!existsSync(dir)) {
    const first = mkdirSync(dir, { recursive: true, mode: 0o700 })
    if (first !== undefined) chmodSync(dir, 0o700)
  }
  // Create the file ourselves so its mode is 0600 whatever the umask; SQLite then creates -wal,
  // -shm and -journal with the main file's permissions, so they inherit 0600 too. No process-wide
  // umask change: that would race with other code in this process.
  const fd = openSync(file, 'a', 0o600)
  try {
    fchmodSync(fd, 0o600)
  } finally {
    closeSync(fd)
  }
}

function tightenSidecars(file: string): void {
  for (const suffix of ['-wal', '-shm', '-journal']) {
    try {
      chmodSync(file + suffix, 0o600)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
}

function configure(db: Db, memory: boolean, busyTimeoutMs: number): void {
  db.pragma(`busy_timeout = ${busyTimeoutMs}`)
  const mode = db.pragma('journal_mode = WAL', { simple: true })
  if (!memory && mode !== 'wal') {
    throw new SpiffeEdgeError('ERR_DATASTORE_IO', `could not enable WAL mode (got ${mode})`, {
      remedy: 'put the datastore on a local filesystem that supports shared memory (not NFS)',
    })
  }
  // WAL + synchronous=NORMAL survives a process crash but may lose the last commits on power loss
  // (the WAL is not fsynced per commit). FULL fsyncs the WAL at every commit, so a write we have
  // acknowledged (a join token consumed, an entry created) is still there after power loss.
  db.pragma('synchronous = FULL')
  // Zero deleted content instead of leaving it in free space: spent join token hashes, deleted
  // entries and nodes must not be recoverable from the file (or a copy of it) after deletion.
  if (db.pragma('secure_delete = ON', { simple: true }) !== 1) {
    throw new SpiffeEdgeError('ERR_DATASTORE_IO', 'could not enable secure_delete', {
      remedy: 'use the SQLite bundled with better-sqlite3 (not one built without secure_delete)',
    })
  }
  // Off by default in SQLite; the ON DELETE CASCADE child tables rely on it.
  db.pragma('foreign_keys = ON')
}

/** Throws ERR_DATASTORE_CORRUPT unless SQLite's `pragma` check answers 'ok'. */
function checkIntegrity(db: Db, pragma: string): void {
  const rows = db.pragma(pragma) as Record<string, unknown>[]
  const found = rows.map((r) => String(Object.values(r)[0]))
  if (found.length === 1 && found[0] === 'ok') return
  throw corrupt(`the database failed its integrity check: ${found.slice(0, 3).join('; ')}`)
}

function corrupt(message: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_CORRUPT', message, {
    cause,
    remedy:
      'stop the server and restore the datastore from a backup (or start over with `server run --reset`, which moves it and the keys aside)',
  })
}

function migrate(db: Db): void {
  const run = db.transaction(() => {
    const tables = db
      .prepare<[], { name: string }>(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
      )
      .all()
      .map((r) => r.name)
    if (tables.length > 0 && !tables.includes('schema_version')) {
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_VERSION',
        `the database holds tables (${tables.slice(0, 5).join(', ')}) but no schema_version`,
        { remedy: 'point the server at a file of its own; this one belongs to something else' },
      )
    }
    db.exec(`CREATE TABLE IF NOT EXISTS schema_version (
      version INTEGER PRIMARY KEY,
      description TEXT NOT NULL,
      applied_at INTEGER NOT NULL
    ) STRICT`)
    const row = db
      .prepare<[], { v: number | null }>('SELECT max(version) AS v FROM schema_version')
      .get()
    const current = row?.v ?? 0
    if (current > LATEST_SCHEMA_VERSION) {
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_VERSION',
        `the database has schema version ${current}; this build knows up to ${LATEST_SCHEMA_VERSION}`,
        {
          remedy:
            'run the spiffe-edge version that wrote this database (or newer), or restore a backup made by this version',
        },
      )
    }
    const record = db.prepare<[number, string, number]>(
      'INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)',
    )
    for (const m of migrations.slice(current)) {
      db.exec(m.sql)
      record.run(m.version, m.description, nowSeconds())
    }
  })
  // IMMEDIATE: two servers starting together must not both run the same migration.
  run.immediate()
}

interface EntryRow {
  id: string
  spiffe_id: string
  parent_id: string
  x509_svid_ttl: number
  jwt_svid_ttl: number
  hint: string
  admin: number
  downstream: number
  expires_at: number | null
  revision: number
  created_at: number
  selectors: string
  dns_names: string
  federates_with: string
}

interface NodeRow {
  spiffe_id: string
  attestor_type: string
  cert_serial: string
  previous_cert_serial: string
  cert_not_after: number
  can_reattest: number
  banned: number
  created_at: number
  updated_at: number
  selectors: string
}

// Child rows are folded into JSON arrays in the same query: one statement per read, no N+1.
const ENTRY_SELECT = `
  SELECT e.id, e.spiffe_id, e.parent_id, e.x509_svid_ttl, e.jwt_svid_ttl, e.hint, e.admin,
    e.downstream, e.expires_at, e.revision, e.created_at,
    (SELECT json_group_array(json_array(s.type, s.value) ORDER BY s.position)
       FROM entry_selectors s WHERE s.entry_id = e.id) AS selectors,
    (SELECT json_group_array(d.name ORDER BY d.position)
       FROM entry_dns_names d WHERE d.entry_id = e.id) AS dns_names,
    (SELECT json_group_array(f.trust_domain ORDER BY f.position)
       FROM entry_federates_with f WHERE f.entry_id = e.id) AS federates_with
  FROM entries e`

// Entries all of whose selectors are in the given set: count matches per entry through the
// (type, value) index and keep those where every selector matched.
const SUBSET_CLAUSE = `e.id IN (
    SELECT es.entry_id
    FROM (SELECT DISTINCT json_extract(j.value, '$[0]') AS type,
                          json_extract(j.value, '$[1]') AS value
          FROM json_each(@selectors) j) q
    JOIN entry_selectors es ON es.type = q.type AND es.value = q.value
    JOIN entries x ON x.id = es.entry_id
    GROUP BY es.entry_id
    HAVING count(*) = max(x.selector_count))`

const NODE_SELECT = `
  SELECT n.spiffe_id, n.attestor_type, n.cert_serial, n.previous_cert_serial, n.cert_not_after, n.can_reattest, n.banned,
    n.created_at, n.updated_at,
    (SELECT json_group_array(json_array(s.type, s.value) ORDER BY s.position)
       FROM attested_node_selectors s WHERE s.spiffe_id = n.spiffe_id) AS selectors
  FROM attested_nodes n`

function prepareStatements(db: Db) {
  return {
    nextRevision: db.prepare<[], { value: number }>(
      'UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value',
    ),
    currentRevision: db.prepare<[], { value: number }>(
      'SELECT value FROM revision_counter WHERE id = 1',
    ),
    getMeta: db.prepare<[string], { value: number }>('SELECT value FROM meta WHERE key = ?'),
    setMeta: db.prepare<[string, number]>(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    ),
    getEntry: db.prepare<[string], EntryRow>(`${ENTRY_SELECT} WHERE e.id = ?`),
    entryExists: db.prepare<[string], { id: string }>('SELECT id FROM entries WHERE id = ?'),
    findDuplicate: db.prepare<[string, string, string, string], { id: string }>(
      `SELECT id FROM entries
       WHERE spiffe_id = ? AND parent_id = ? AND selector_key = ? AND id != ?`,
    ),
    insertEntry: db.prepare(
      `INSERT INTO entries (id, spiffe_id, parent_id, selector_key, selector_count, x509_svid_ttl,
         jwt_svid_ttl, hint, admin, downstream, expires_at, revision, created_at)
       VALUES (@id, @spiffeId, @parentId, @selectorKey, @selectorCount, @x509SvidTtl,
         @jwtSvidTtl, @hint, @admin, @downstream, @expiresAt, @revision, @createdAt)`,
    ),
    updateEntry: db.prepare(
      `UPDATE entries SET spiffe_id = @spiffeId, parent_id = @parentId,
         selector_key = @selectorKey, selector_count = @selectorCount,
         x509_svid_ttl = @x509SvidTtl, jwt_svid_ttl = @jwtSvidTtl, hint = @hint, admin = @admin,
         downstream = @downstream, expires_at = @expiresAt, revision = @revision
       WHERE id = @id`,
    ),
    deleteEntry: db.prepare<[string]>('DELETE FROM entries WHERE id = ?'),
    insertEntrySelector: db.prepare<[string, number, string, string]>(
      'INSERT INTO entry_selectors (entry_id, position, type, value) VALUES (?, ?, ?, ?)',
    ),
    insertDnsName: db.prepare<[string, number, string]>(
      'INSERT INTO entry_dns_names (entry_id, position, name) VALUES (?, ?, ?)',
    ),
    insertFederatesWith: db.prepare<[string, number, string]>(
      'INSERT INTO entry_federates_with (entry_id, position, trust_domain) VALUES (?, ?, ?)',
    ),
    deleteEntrySelectors: db.prepare<[string]>('DELETE FROM entry_selectors WHERE entry_id = ?'),
    deleteDnsNames: db.prepare<[string]>('DELETE FROM entry_dns_names WHERE entry_id = ?'),
    deleteFederatesWith: db.prepare<[string]>(
      'DELETE FROM entry_federates_with WHERE entry_id = ?',
    ),
    insertTombstone: db.prepare<[string, number]>(
      'INSERT OR REPLACE INTO entry_tombstones (id, revision) VALUES (?, ?)',
    ),
    entriesSince: db.prepare<[number], EntryRow>(
      `${ENTRY_SELECT} WHERE e.revision > ? ORDER BY e.revision`,
    ),
    allEntriesByRevision: db.prepare<[], EntryRow>(`${ENTRY_SELECT} ORDER BY e.revision`),
    tombstonesSince: db.prepare<[number], { id: string }>(
      'SELECT id FROM entry_tombstones WHERE revision > ? ORDER BY revision',
    ),
    pruneTombstones: db.prepare<[number]>('DELETE FROM entry_tombstones WHERE revision <= ?'),
    expiredEntries: db.prepare<[number], { id: string }>(
      'SELECT id FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY id',
    ),

    getNode: db.prepare<[string], NodeRow>(`${NODE_SELECT} WHERE n.spiffe_id = ?`),
    listNodes: db.prepare<[], NodeRow>(`${NODE_SELECT} ORDER BY n.spiffe_id`),
    insertNode: db.prepare(
      `INSERT INTO attested_nodes (spiffe_id, attestor_type, cert_serial, previous_cert_serial,
         cert_not_after, can_reattest, banned, created_at, updated_at)
       VALUES (@spiffeId, @attestorType, @certSerial, @previousCertSerial, @certNotAfter,
         @canReattest, @banned, @createdAt, @updatedAt)`,
    ),
    updateNode: db.prepare(
      `UPDATE attested_nodes SET attestor_type = @attestorType, cert_serial = @certSerial,
         previous_cert_serial = @previousCertSerial, cert_not_after = @certNotAfter, can_reattest = @canReattest, banned = @banned,
         created_at = @createdAt, updated_at = @updatedAt
       WHERE spiffe_id = @spiffeId`,
    ),
    deleteNode: db.prepare<[string]>('DELETE FROM attested_nodes WHERE spiffe_id = ?'),
    insertNodeSelector: db.prepare<[string, number, string, string]>(
      'INSERT INTO attested_node_selectors (spiffe_id, position, type, value) VALUES (?, ?, ?, ?)',
    ),
    deleteNodeSelectors: db.prepare<[string]>(
      'DELETE FROM attested_node_selectors WHERE spiffe_id = ?',
    ),

    insertJoinToken: db.prepare<[string, string | null, number]>(
      'INSERT INTO join_tokens (token_hash, spiffe_id, expires_at) VALUES (?, ?, ?)',
    ),
    // One statement: the row goes to exactly one caller, even across processes.
    consumeJoinToken: db.prepare<[string], { spiffe_id: string | null; expires_at: number }>(
      'DELETE FROM join_tokens WHERE token_hash = ? RETURNING spiffe_id, expires_at',
    ),
    pruneJoinTokens: db.prepare<[number]>('DELETE FROM join_tokens WHERE expires_at <= ?'),

    getBundle: db.prepare<[string], { json: string; sequence: number }>(
      'SELECT json, sequence FROM bundles WHERE trust_domain = ?',
    ),
    setBundle: db.prepare<[string, string, number]>(
      `INSERT INTO bundles (trust_domain, json, sequence) VALUES (?, ?, ?)
       ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json, sequence = excluded.sequence`,
    ),
    getJournal: db.prepare<[string], { value: string }>(
      'SELECT value FROM ca_journal WHERE name = ?',
    ),
    setJournal: db.prepare<[string, string]>(
      `INSERT INTO ca_journal (name, value) VALUES (?, ?)
       ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
    ),
  }
}

type Statements = ReturnType<typeof prepareStatements>

class SqliteDatastore implements Datastore {
  #db: Db
  #st: Statements
  #listCache = new Map<string, BetterSqlite3.Statement<[Record<string, string>], EntryRow>>()
  #closed = false
  /** Sticky: once SQLite reports corruption, health fails until the store is restored. */
  #corruption: SpiffeEdgeError | undefined
  #checkedAt = 0

  constructor(db: Db) {
    this.#db = db
    this.#st = prepareStatements(db)
  }

  async createEntry(e: EntryInput): Promise<RegistrationEntry> {
    return this.#op('create entry', () => {
      validateEntryInput(e)
      const id = randomUUID()
      this.#write(() => {
        this.#refuseDuplicate(e, id)
        const revision = this.#nextRevision()
        this.#st.insertEntry.run(entryParams(id, e, revision, nowSeconds()))
        this.#insertEntryChildren(id, e)
      })
      return this.#mustGetEntry(id)
    })
  }

  async updateEntry(id: string, e: EntryInput): Promise<RegistrationEntry> {
    return this.#op('update entry', () => {
      checkNonEmpty('id', id)
      validateEntryInput(e)
      this.#write(() => {
        if (!this.#st.entryExists.get(id)) throw entryNotFound(id)
        this.#refuseDuplicate(e, id)
        const revision = this.#nextRevision()
        const { createdAt: _, ...params } = entryParams(id, e, revision, 0)
        this.#st.updateEntry.run(params)
        this.#st.deleteEntrySelectors.run(id)
        this.#st.deleteDnsNames.run(id)
        this.#st.deleteFederatesWith.run(id)
        this.#insertEntryChildren(id, e)
      })
      return this.#mustGetEntry(id)
    })
  }

  async deleteEntry(id: string): Promise<void> {
    return this.#op('delete entry', () => {
      checkNonEmpty('id', id)
      this.#write(() => {
        if (!this.#st.entryExists.get(id)) throw entryNotFound(id)
        this.#deleteEntryWithTombstone(id)
      })
    })
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    return this.#op('get entry', () => {
      checkNonEmpty('id', id)
      const row = this.#st.getEntry.get(id)
      return row && toEntry(row)
    })
  }

  async listEntries(filter: EntryFilter = {}): Promise<RegistrationEntry[]> {
    return this.#op('list entries', () => {
      const where: string[] = []
      const params: Record<string, string> = {}
      if (filter.parentId !== undefined) {
        checkNonEmpty('parentId', filter.parentId)
        where.push('e.parent_id = @parentId')
        params.parentId = filter.parentId
      }
      if (filter.spiffeId !== undefined) {
        checkNonEmpty('spiffeId', filter.spiffeId)
        where.push('e.spiffe_id = @spiffeId')
        params.spiffeId = filter.spiffeId
      }
      if (filter.selectorsSubsetOf !== undefined) {
        where.push(SUBSET_CLAUSE)
        params.selectors = selectorSetParam(filter.selectorsSubsetOf)
      }
      const key = where.join(' AND ')
      let stmt = this.#listCache.get(key)
      if (!stmt) {
        const sql = `${ENTRY_SELECT}${key ? ` WHERE ${key}` : ''} ORDER BY e.id`
        stmt = this.#db.prepare<[Record<string, string>], EntryRow>(sql)
        this.#listCache.set(key, stmt)
      }
      return stmt.all(params).map(toEntry)
    })
  }

  async entryChangesSince(revision: number): Promise<EntryChanges> {
    return this.#op('read entry changes', () => {
      checkInt('revision', revision, 0)
      // One read transaction: the revision, upserts and tombstones come from the same snapshot.
      const read = this.#db.transaction((): EntryChanges => {
        const current = this.#currentRevision()
        const horizon = this.#st.getMeta.get(TOMBSTONE_HORIZON)?.value ?? 0
        if (revision < horizon || revision > current) {
          const upserted = this.#st.allEntriesByRevision.all().map(toEntry)
          return { revision: current, upserted, deleted: [], resync: true }
        }
        return {
          revision: current,
          upserted: this.#st.entriesSince.all(revision).map(toEntry),
          deleted: this.#st.tombstonesSince.all(revision).map((r) => r.id),
        }
      })
      return read.deferred()
    })
  }

  async currentRevision(): Promise<number> {
    return this.#op('read revision', () => this.#currentRevision())
  }

  async pruneExpiredEntries(now: number): Promise<number> {
    return this.#op('prune expired entries', () => {
      checkInt('now', now)
      return this.#write(() => {
        const ids = this.#st.expiredEntries.all(now).map((r) => r.id)
        for (const id of ids) this.#deleteEntryWithTombstone(id)
        return ids.length
      })
    })
  }

  async pruneEntryTombstones(throughRevision: number): Promise<number> {
    return this.#op('prune entry tombstones', () => {
      checkInt('throughRevision', throughRevision, 0)
      return this.#write(() => {
        // Never past the current revision, or up-to-date callers would be told to resync.
        const through = Math.min(throughRevision, this.#currentRevision())
        const removed = this.#st.pruneTombstones.run(through).changes
        const horizon = this.#st.getMeta.get(TOMBSTONE_HORIZON)?.value ?? 0
        if (through > horizon) this.#st.setMeta.run(TOMBSTONE_HORIZON, through)
        return removed
      })
    })
  }

  async createAttestedNode(n: AttestedNode): Promise<void> {
    return this.#op('create attested node', () => {
      validateAttestedNode(n)
      this.#write(() => {
        if (this.#st.getNode.get(n.spiffeId)) {
          throw new SpiffeEdgeError(
            'ERR_DATASTORE_CONFLICT',
            `attested node ${n.spiffeId} already exists`,
            { remedy: 'update or delete the existing node instead of creating it again' },
          )
        }
        this.#st.insertNode.run(nodeParams(n))
        this.#insertNodeSelectors(n.spiffeId, n.selectors)
      })
    })
  }

  async getAttestedNode(spiffeId: string): Promise<AttestedNode | undefined> {
    return this.#op('get attested node', () => {
      checkNonEmpty('spiffeId', spiffeId)
      const row = this.#st.getNode.get(spiffeId)
      return row && toNode(row)
    })
  }

  async updateAttestedNode(spiffeId: string, patch: Partial<AttestedNode>): Promise<AttestedNode> {
    return this.#op('update attested node', () => {
      checkNonEmpty('spiffeId', spiffeId)
      if (typeof patch !== 'object' || patch === null) throw invalid('patch must be an object')
      if (patch.spiffeId !== undefined && patch.spiffeId !== spiffeId) {
        throw invalid('spiffeId of an attested node cannot change; delete and create instead')
      }
      return this.#write(() => {
        const row = this.#st.getNode.get(spiffeId)
        if (!row) throw nodeNotFound(spiffeId)
        const merged: AttestedNode = { ...toNode(row), updatedAt: nowSeconds() }
        // Copy only defined keys: a JS caller's explicit undefined must not erase a field.
        for (const [k, v] of Object.entries(patch)) {
          if (v !== undefined) (merged as unknown as Record<string, unknown>)[k] = v
        }
        validateAttestedNode(merged)
        this.#st.updateNode.run(nodeParams(merged))
        if (patch.selectors !== undefined) {
          this.#st.deleteNodeSelectors.run(spiffeId)
          this.#insertNodeSelectors(spiffeId, merged.selectors)
        }
        const stored = this.#st.getNode.get(spiffeId)
        if (!stored) throw nodeNotFound(spiffeId)
        return toNode(stored)
      })
    })
  }

  async listAttestedNodes(): Promise<AttestedNode[]> {
    return this.#op('list attested nodes', () => this.#st.listNodes.all().map(toNode))
  }

  async deleteAttestedNode(spiffeId: string): Promise<void> {
    return this.#op('delete attested node', () => {
      checkNonEmpty('spiffeId', spiffeId)
      // Selectors go with it (ON DELETE CASCADE) in the same implicit transaction.
      if (this.#st.deleteNode.run(spiffeId).changes === 0) throw nodeNotFound(spiffeId)
    })
  }

  async createJoinToken(t: JoinTokenInput): Promise<void> {
    return this.#op('create join token', () => {
      validateJoinToken(t)
      try {
        this.#st.insertJoinToken.run(t.tokenHash, t.spiffeId ?? null, t.expiresAt)
      } catch (err) {
        if (isConstraint(err, 'SQLITE_CONSTRAINT_PRIMARYKEY')) {
          // The hash is not named: it identifies a secret.
          throw new SpiffeEdgeError('ERR_DATASTORE_CONFLICT', 'that join token already exists', {
            remedy: 'generate a new random token',
          })
        }
        throw err
      }
    })
  }

  async consumeJoinToken(
    tokenHash: string,
    now: number,
  ): Promise<{ spiffeId?: string } | undefined> {
    return this.#op('consume join token', () => {
      checkNonEmpty('tokenHash', tokenHash)
      checkInt('now', now)
      const row = this.#st.consumeJoinToken.get(tokenHash)
      if (!row || now >= row.expires_at) return undefined
      return row.spiffe_id === null ? {} : { spiffeId: row.spiffe_id }
    })
  }

  async consumeJoinTokenForAgent(
    tokenHash: string,
    now: number,
    agentId: string,
  ): Promise<{ spiffeId?: string; aliasEntryId?: string } | undefined> {
    return this.#op('consume join token', () => {
      checkNonEmpty('tokenHash', tokenHash)
      checkInt('now', now)
      checkNonEmpty('agentId', agentId)
      // One IMMEDIATE transaction: a crash or a failed alias insert rolls the token delete back.
      return this.#write(() => {
        const row = this.#st.consumeJoinToken.get(tokenHash)
        if (!row || now >= row.expires_at) return undefined
        if (row.spiffe_id === null) return {}
        const alias = aliasEntry(row.spiffe_id, agentId)
        validateEntryInput(alias)
        const existing = this.#st.findDuplicate.get(
          alias.spiffeId,
          alias.parentId,
          selectorKey(alias.selectors),
          '',
        )
        if (existing) return { spiffeId: row.spiffe_id, aliasEntryId: existing.id }
        const id = randomUUID()
        this.#st.insertEntry.run(entryParams(id, alias, this.#nextRevision(), nowSeconds()))
        this.#insertEntryChildren(id, alias)
        return { spiffeId: row.spiffe_id, aliasEntryId: id }
      })
    })
  }

  async pruneJoinTokens(now: number): Promise<number> {
    return this.#op('prune join tokens', () => {
      checkInt('now', now)
      return this.#st.pruneJoinTokens.run(now).changes
    })
  }

  async getBundle(trustDomain: string): Promise<{ json: string; sequence: number } | undefined> {
    return this.#op('get bundle', () => {
      checkNonEmpty('trustDomain', trustDomain)
      const row = this.#st.getBundle.get(trustDomain)
      return row && { json: row.json, sequence: row.sequence }
    })
  }

  async setBundle(trustDomain: string, json: string, sequence: number): Promise<void> {
    return this.#op('set bundle', () => {
      checkNonEmpty('trustDomain', trustDomain)
      checkJson('json', json)
      checkInt('sequence', sequence, 0)
      this.#st.setBundle.run(trustDomain, json, sequence)
    })
  }

  async getJournal(name: string): Promise<string | undefined> {
    return this.#op('get CA journal', () => {
      checkNonEmpty('name', name)
      return this.#st.getJournal.get(name)?.value
    })
  }

  async setJournal(name: string, value: string): Promise<void> {
    return this.#op('set CA journal', () => {
      checkNonEmpty('name', name)
      checkJson('value', value)
      this.#st.setJournal.run(name, value)
    })
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

  /**
   * A write transaction. IMMEDIATE takes the write lock up front: a deferred transaction that reads
   * and then writes can fail with SQLITE_BUSY without waiting when another process wrote between.
   */
  #write<T>(fn: () => T): T {
    return this.#db.transaction(fn).immediate()
  }

  #currentRevision(): number {
    const row = this.#st.currentRevision.get()
    if (!row) throw new Error('revision_counter row is missing')
    return row.value
  }

  #nextRevision(): number {
    const row = this.#st.nextRevision.get()
    if (!row) throw new Error('revision_counter row is missing')
    return row.value
  }

  #refuseDuplicate(e: EntryInput, id: string): void {
    const dup = this.#st.findDuplicate.get(e.spiffeId, e.parentId, selectorKey(e.selectors), id)
    if (dup) {
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_CONFLICT',
        `entry ${dup.id} already has this spiffeId, parentId and selector set`,
        { remedy: 'update that entry instead, or change the selectors' },
      )
    }
  }

  #insertEntryChildren(id: string, e: EntryInput): void {
    for (const [i, s] of e.selectors.entries()) {
      this.#st.insertEntrySelector.run(id, i, s.type, s.value)
    }
    for (const [i, d] of e.dnsNames.entries()) this.#st.insertDnsName.run(id, i, d)
    for (const [i, f] of e.federatesWith.entries()) this.#st.insertFederatesWith.run(id, i, f)
  }

  #insertNodeSelectors(spiffeId: string, selectors: readonly Selector[]): void {
    for (const [i, s] of selectors.entries()) {
      this.#st.insertNodeSelector.run(spiffeId, i, s.type, s.value)
    }
  }

  #deleteEntryWithTombstone(id: string): void {
    const revision = this.#nextRevision()
    this.#st.deleteEntry.run(id)
    this.#st.insertTombstone.run(id, revision)
  }

  #mustGetEntry(id: string): RegistrationEntry {
    const row = this.#st.getEntry.get(id)
    if (!row) throw entryNotFound(id)
    return toEntry(row)
  }
}

function entryParams(id: string, e: EntryInput, revision: number, createdAt: number) {
  return {
    id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectorKey: selectorKey(e.selectors),
    selectorCount: e.selectors.length,
    x509SvidTtl: e.x509SvidTtl,
    jwtSvidTtl: e.jwtSvidTtl,
    hint: e.hint,
    admin: e.admin ? 1 : 0,
    downstream: e.downstream ? 1 : 0,
    expiresAt: e.expiresAt,
    revision,
    createdAt,
  }
}

/** SPIRE's node alias: the agent holding `agentId` (and only it) is given `spiffeId`. */
function aliasEntry(spiffeId: string, agentId: string): EntryInput {
  return {
    spiffeId,
    parentId: agentId,
    selectors: [{ type: 'spiffe_id', value: agentId }],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: '',
    federatesWith: [],
    admin: false,
    downstream: false,
    expiresAt: null,
  }
}

function nodeParams(n: AttestedNode) {
  return {
    spiffeId: n.spiffeId,
    attestorType: n.attestorType,
    certSerial: n.certSerial,
    previousCertSerial: n.previousCertSerial ?? '',
    certNotAfter: n.certNotAfter,
    canReattest: n.canReattest ? 1 : 0,
    banned: n.banned ? 1 : 0,
    createdAt: n.createdAt,
    updatedAt: n.updatedAt,
  }
}

function toSelectors(json: string): Selector[] {
  return (JSON.parse(json) as [string, string][]).map(([type, value]) => ({ type, value }))
}

function toEntry(r: EntryRow): RegistrationEntry {
  return {
    id: r.id,
    spiffeId: r.spiffe_id,
    parentId: r.parent_id,
    selectors: toSelectors(r.selectors),
    x509SvidTtl: r.x509_svid_ttl,
    jwtSvidTtl: r.jwt_svid_ttl,
    dnsNames: JSON.parse(r.dns_names) as string[],
    hint: r.hint,
    federatesWith: JSON.parse(r.federates_with) as string[],
    admin: r.admin === 1,
    downstream: r.downstream === 1,
    expiresAt: r.expires_at,
    revision: r.revision,
    createdAt: r.created_at,
  }
}

function toNode(r: NodeRow): AttestedNode {
  return {
    spiffeId: r.spiffe_id,
    attestorType: r.attestor_type,
    selectors: toSelectors(r.selectors),
    certSerial: r.cert_serial,
    previousCertSerial: r.previous_cert_serial,
    certNotAfter: r.cert_not_after,
    canReattest: r.can_reattest === 1,
    banned: r.banned === 1,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  }
}

/** The caller's selector set as a JSON array of [type, value] (duplicates are harmless). */
function selectorSetParam(selectors: unknown): string {
  if (!Array.isArray(selectors)) throw invalid('selectorsSubsetOf must be an array of selectors')
  const pairs = (selectors as unknown[]).map((s, i) => {
    const sel = s as Partial<Selector> | null
    if (typeof sel?.type !== 'string' || typeof sel.value !== 'string') {
      throw invalid(`selectorsSubsetOf[${i}] must be {type, value} strings`)
    }
    return [sel.type, sel.value]
  })
  return JSON.stringify(pairs)
}

function closedError(what: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_CLOSED', `cannot ${what}: the datastore is closed`, {
    remedy: 'open the datastore again; this handle was closed',
  })
}

function entryNotFound(id: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no registration entry with id ${id}`, {
    remedy: 'list entries to find the current id; it may have been deleted',
  })
}

function nodeNotFound(spiffeId: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no attested node ${spiffeId}`, {
    remedy: 'the agent may never have attested, or was deleted; list attested nodes to check',
  })
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000)
}

function sqliteCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined
}

function isConstraint(err: unknown, code: string): boolean {
  return sqliteCode(err) === code
}

/** SQLite and fs failures → ERR_DATASTORE_*; our own errors pass through untouched. */
function mapError(err: unknown, what: string): unknown {
  if (err instanceof SpiffeEdgeError) return err
  const why = err instanceof Error ? err.message : String(err)
  const code = sqliteCode(err)
  const message = `cannot ${what}: ${why}`
  if (code?.startsWith('SQLITE_CONSTRAINT_UNIQUE') || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
    return new SpiffeEdgeError('ERR_DATASTORE_CONFLICT', message, {
      cause: err,
      remedy: 'the record already exists; update it instead',
    })
  }
  if (code?.startsWith('SQLITE_BUSY') || code?.startsWith('SQLITE_LOCKED')) {
    return new SpiffeEdgeError('ERR_DATASTORE_BUSY', message, {
      cause: err,
      remedy: 'another process holds the database lock; retry, or raise busyTimeoutMs',
    })
  }
  if (code?.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') return corrupt(message, err)
  let remedy = 'check the datastore path, its permissions and free disk space'
  if (code === 'SQLITE_FULL') remedy = 'free disk space on the datastore volume'
  else if (code?.startsWith('SQLITE_READONLY') || code?.startsWith('SQLITE_CANTOPEN')) {
    remedy = 'make the datastore file and its directory writable by the server user'
  }
  return new SpiffeEdgeError('ERR_DATASTORE_IO', message, { cause: err, remedy })
}
