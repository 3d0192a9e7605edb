/** The SQL of the SQLite datastore, prepared once per connection. */
import type BetterSqlite3 from 'better-sqlite3'
import type { EntryRow, NodeRow } from './sqlite-rows.js'

type Db = BetterSqlite3.Database
type Stmt<P extends unknown[] | object = unknown[], R = unknown> = BetterSqlite3.Statement<P, R>

// Child rows are folded into JSON arrays in the same query: one statement per read, no N+1.
export const ENTRY_SELECT = `
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
export const SUBSET_CLAUSE = `e.id IN (
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

/** Spelled out: the .d.ts cannot name the types better-sqlite3 infers for prepare(). */
export interface Statements {
  readonly nextRevision: Stmt<[], { value: number }>
  readonly currentRevision: Stmt<[], { value: number }>
  readonly getMeta: Stmt<[string], { value: number }>
  readonly setMeta: Stmt<[string, number]>
  readonly getEntry: Stmt<[string], EntryRow>
  readonly entryExists: Stmt<[string], { id: string }>
  readonly findDuplicate: Stmt<[string, string, string, string], { id: string }>
  readonly insertEntry: Stmt
  readonly updateEntry: Stmt
  readonly deleteEntry: Stmt<[string]>
  readonly insertEntrySelector: Stmt<[string, number, string, string]>
  readonly insertDnsName: Stmt<[string, number, string]>
  readonly insertFederatesWith: Stmt<[string, number, string]>
  readonly deleteEntrySelectors: Stmt<[string]>
  readonly deleteDnsNames: Stmt<[string]>
  readonly deleteFederatesWith: Stmt<[string]>
  readonly insertTombstone: Stmt<[string, number]>
  readonly entriesSince: Stmt<[number], EntryRow>
  readonly allEntriesByRevision: Stmt<[], EntryRow>
  readonly tombstonesSince: Stmt<[number], { id: string }>
  readonly getNonce: Stmt<[string], { digest: string; expires_at: number; answer: Buffer | null }>
  readonly putNonce: Stmt<[string, string, number]>
  readonly setNonceAnswer: Stmt<[Buffer, string]>
  readonly releaseNonce: Stmt<[string, string]>
  readonly pruneSomeNonces: Stmt<[number]>
  readonly pruneNonces: Stmt<[number]>
  readonly countNonces: Stmt<[], { n: number }>
  readonly pruneTombstones: Stmt<[number]>
  readonly expiredEntries: Stmt<[number], { id: string }>
  readonly getNode: Stmt<[string], NodeRow>
  readonly listNodes: Stmt<[], NodeRow>
  readonly insertNode: Stmt
  readonly updateNode: Stmt
  readonly deleteNode: Stmt<[string]>
  readonly insertNodeSelector: Stmt<[string, number, string, string]>
  readonly deleteNodeSelectors: Stmt<[string]>
  readonly insertJoinToken: Stmt<[string, string | null, number]>
  readonly consumeJoinToken: Stmt<[string], { spiffe_id: string | null; expires_at: number }>
  readonly pruneJoinTokens: Stmt<[number]>
  readonly getBundle: Stmt<[string], { json: string; sequence: number }>
  readonly setBundle: Stmt<[string, string, number]>
  readonly getJournal: Stmt<[string], { value: string }>
  readonly setJournal: Stmt<[string, string]>
}

export function prepareStatements(db: Db): Statements {
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

    getNonce: db.prepare<[string], { digest: string; expires_at: number; answer: Buffer | null }>(
      'SELECT digest, expires_at, answer FROM seen_nonces WHERE key = ?',
    ),
    putNonce: db.prepare<[string, string, number]>(
      `INSERT INTO seen_nonces (key, digest, expires_at, answer) VALUES (?, ?, ?, NULL)
       ON CONFLICT (key) DO UPDATE SET digest = excluded.digest, expires_at = excluded.expires_at,
         answer = NULL`,
    ),
    setNonceAnswer: db.prepare<[Buffer, string]>('UPDATE seen_nonces SET answer = ? WHERE key = ?'),
    releaseNonce: db.prepare<[string, string]>(
      'DELETE FROM seen_nonces WHERE key = ? AND digest = ? AND answer IS NULL',
    ),
    // A few at a time on the write path (the tick prunes the rest), so a claim stays cheap.
    pruneSomeNonces: db.prepare<[number]>(
      `DELETE FROM seen_nonces WHERE key IN
         (SELECT key FROM seen_nonces WHERE expires_at <= ? ORDER BY expires_at LIMIT 16)`,
    ),
    pruneNonces: db.prepare<[number]>('DELETE FROM seen_nonces WHERE expires_at <= ?'),
    countNonces: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM seen_nonces'),
  }
}

/** What the per-table operations (sqlite-entries, -nodes, -tokens) work on: one open connection. */
export interface SqliteContext {
  readonly db: Db
  readonly st: Statements
  /** Prepared listEntries queries, one per filter shape (at most 8). */
  readonly listCache: Map<string, BetterSqlite3.Statement<[Record<string, string>], EntryRow>>
  /**
   * A write transaction. IMMEDIATE takes the write lock up front: a deferred transaction that reads
   * and then writes can fail with SQLITE_BUSY without waiting when another process wrote between.
   */
  write<T>(fn: () => T): T
}

/**
 * Runs `fn` with its commit not fsynced (WAL, synchronous=NORMAL): it survives a process crash,
 * and the next FULL commit makes it durable too; only power loss before that can drop it. For
 * writes whose loss costs a retry, never safety (a kept answer, a short-lived attestation round).
 */
export function unsynced<T>(c: SqliteContext, fn: () => T): T {
  c.db.pragma('synchronous = NORMAL')
  try {
    return fn()
  } finally {
    c.db.pragma('synchronous = FULL')
  }
}
