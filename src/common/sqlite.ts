/**
 * The one place better-sqlite3 is loaded: the server's datastore, the agent's state and the data
 * dir lock all use it, and none of them may import another's module (agent and server meet only
 * through the protocol).
 */
import { createRequire } from 'node:module'
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../errors.js'

export type DbConstructor = typeof BetterSqlite3
export type Db = BetterSqlite3.Database

let cachedConstructor: DbConstructor | undefined

/**
 * Loads better-sqlite3 and its native addon, or throws ERR_DATASTORE_UNAVAILABLE (never a bare
 * MODULE_NOT_FOUND or dlopen error). Lazy, like the TPM addon: only what opens a database needs it.
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
