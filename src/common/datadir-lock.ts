/**
 * One process per data dir. Node has no flock(2), so the lock is an SQLite database
 * `<dir>/.lock` in exclusive locking mode with a committed write: SQLite then keeps its POSIX
 * (fcntl) write lock until the connection closes, and the kernel drops it when the process dies,
 * even on kill -9, so a crash never leaves a stale lock to clean up by hand. Within one process
 * SQLite tracks locks per inode, so a second acquire in the same process is refused too.
 */
import { chmodSync, lstatSync, mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../errors.js'
import { loadBetterSqlite3 } from './sqlite.js'

export interface DataDirLock {
  readonly path: string
  /** Idempotent. */
  release(): void
}

function errCode(err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code
  return typeof c === 'string' ? c : undefined
}

/** Makes sure `dir` is a directory (created 0700 when missing) or throws ERR_DATA_DIR. */
export function ensureDataDir(dir: string): string {
  const abs = resolve(dir)
  let st: ReturnType<typeof lstatSync> | undefined
  try {
    st = lstatSync(abs)
  } catch (err) {
    if (errCode(err) !== 'ENOENT') throw dataDirError(abs, `cannot be read: ${errCode(err)}`, err)
  }
  if (st && !st.isDirectory()) {
    throw dataDirError(abs, 'exists but is not a directory')
  }
  // Another user who owns the data dir can swap the datastore or the keys under us: refuse it.
  const euid = process.geteuid?.()
  if (st && euid !== undefined && st.uid !== euid) {
    throw dataDirError(abs, `is owned by uid ${st.uid}, not by this process's uid ${euid}`)
  }
  if (!st) {
    try {
      mkdirSync(abs, { recursive: true, mode: 0o700 })
      chmodSync(abs, 0o700)
    } catch (err) {
      throw dataDirError(abs, `cannot be created: ${errCode(err) ?? (err as Error).message}`, err)
    }
  }
  return abs
}

function dataDirError(dir: string, why: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATA_DIR', `data dir ${dir} ${why}`, {
    cause,
    remedy:
      'point data_dir (or --data-dir) at a directory this user owns, or remove what is in the way',
  })
}

/**
 * Takes the data dir's lock or throws ERR_DATA_DIR_LOCKED. `who` names the kind of process in
 * messages ("server", "agent").
 */
export function acquireDataDirLock(dir: string, who: string): DataDirLock {
  const abs = ensureDataDir(dir)
  const path = join(abs, '.lock')
  const Db = loadBetterSqlite3()
  let db: BetterSqlite3.Database
  try {
    db = new Db(path, { timeout: 0 })
  } catch (err) {
    throw dataDirError(abs, `has a lock file ${path} that cannot be opened`, err)
  }
  try {
    db.pragma('locking_mode = EXCLUSIVE')
    // The first write takes the EXCLUSIVE lock; exclusive mode keeps it after the commit.
    db.exec('CREATE TABLE IF NOT EXISTS holder (pid INTEGER NOT NULL, since INTEGER NOT NULL)')
    db.exec('DELETE FROM holder')
    db.prepare('INSERT INTO holder (pid, since) VALUES (?, ?)').run(process.pid, Date.now())
  } catch (err) {
    db.close()
    const code = errCode(err)
    if (code?.startsWith('SQLITE_BUSY') || code?.startsWith('SQLITE_LOCKED')) {
      throw new SpiffeEdgeError(
        'ERR_DATA_DIR_LOCKED',
        `data dir ${abs} is in use by another ${who} process`,
        {
          cause: err,
          remedy: `stop the other ${who} first, or give this one its own data_dir (two on one data dir would share and corrupt its state)`,
        },
      )
    }
    throw dataDirError(abs, `cannot be locked (${path}): ${(err as Error).message}`, err)
  }
  // Held strongly until released: a garbage-collected connection closes, and the lock with it.
  held.add(db)
  return {
    path,
    release() {
      if (!held.delete(db)) return
      db.close()
    },
  }
}

const held = new Set<BetterSqlite3.Database>()
