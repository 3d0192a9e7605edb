/**
 * SQLite datastore on better-sqlite3. better-sqlite3 is synchronous, so each method body runs to
 * completion without yielding: in-process callers never interleave, and multi-statement writes run
 * in BEGIN IMMEDIATE transactions so other processes on the same file serialize on the write lock.
 */
import { chmodSync, closeSync, existsSync, fchmodSync, mkdirSync, openSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import type BetterSqlite3 from 'better-sqlite3'
import { loadBetterSqlite3 } from '../../common/sqlite.js'
import { SpiffeEdgeError } from '../../errors.js'
import { LATEST_SCHEMA_VERSION, migrations } from './migrations.js'
import { checkIntegrity, mapError } from './sqlite-errors.js'
import { nowSeconds } from './sqlite-rows.js'
import { SqliteDatastore } from './sqlite-store.js'
import type { Datastore } from './types.js'
import { checkInt, checkNonEmpty, invalid } from './validate.js'

type Db = BetterSqlite3.Database

export interface SqliteDatastoreOptions {
  /** How long a write waits for another process's lock before ERR_DATASTORE_BUSY (5000). */
  readonly busyTimeoutMs?: number
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000

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

// Re-exported for the datastore's callers; the loader itself is shared (src/common/sqlite.ts).
export { loadBetterSqlite3 }
