/** SQLite and fs failures as ERR_DATASTORE_* errors, each with the remedy for its real cause. */
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'

/** Throws ERR_DATASTORE_CORRUPT unless SQLite's `pragma` check answers 'ok'. */
export function checkIntegrity(db: BetterSqlite3.Database, pragma: string): void {
  const rows = db.pragma(pragma) as Record<string, unknown>[]
  const found = rows.map((r) => String(Object.values(r)[0]))
  if (found.length === 1 && found[0] === 'ok') return
  throw corrupt(`the database failed its integrity check: ${found.slice(0, 3).join('; ')}`)
}

export function corrupt(message: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_CORRUPT', message, {
    cause,
    remedy:
      'stop the server and restore the datastore from a backup (or start over with `server run --reset`, which moves it and the keys aside)',
  })
}

export function closedError(what: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_CLOSED', `cannot ${what}: the datastore is closed`, {
    remedy: 'open the datastore again; this handle was closed',
  })
}

export function entryNotFound(id: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no registration entry with id ${id}`, {
    remedy: 'list entries to find the current id; it may have been deleted',
  })
}

export function nodeNotFound(spiffeId: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no attested node ${spiffeId}`, {
    remedy: 'the agent may never have attested, or was deleted; list attested nodes to check',
  })
}

function sqliteCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined
}

export function isConstraint(err: unknown, code: string): boolean {
  return sqliteCode(err) === code
}

/** SQLite and fs failures → ERR_DATASTORE_*; our own errors pass through untouched. */
export function mapError(err: unknown, what: string): unknown {
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
