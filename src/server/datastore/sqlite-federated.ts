/**
 * Bundles of federated trust domains on SQLite. Statements are prepared here, per connection, so
 * the shared statement table (sqlite-statements.ts) stays about entries, nodes and tokens.
 */
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'
import { nowSeconds } from './sqlite-rows.js'
import type { SqliteContext } from './sqlite-statements.js'
import type { FederatedBundleRow } from './types.js'
import { checkInt, checkJson, checkNonEmpty } from './validate.js'

interface Row {
  trust_domain: string
  json: string
  sequence: number
  updated_at: number
}

interface Statements {
  get: BetterSqlite3.Statement<[string], Row>
  set: BetterSqlite3.Statement<[string, string, number, number]>
  list: BetterSqlite3.Statement<[], Row>
  remove: BetterSqlite3.Statement<[string]>
}

const prepared = new WeakMap<object, Statements>()

function st(c: SqliteContext): Statements {
  let s = prepared.get(c.db)
  if (!s) {
    s = {
      get: c.db.prepare<[string], Row>('SELECT * FROM federated_bundles WHERE trust_domain = ?'),
      set: c.db.prepare<[string, string, number, number]>(
        `INSERT INTO federated_bundles (trust_domain, json, sequence, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json,
           sequence = excluded.sequence, updated_at = excluded.updated_at`,
      ),
      list: c.db.prepare<[], Row>('SELECT * FROM federated_bundles ORDER BY trust_domain'),
      remove: c.db.prepare<[string]>('DELETE FROM federated_bundles WHERE trust_domain = ?'),
    }
    prepared.set(c.db, s)
  }
  return s
}

function toRow(r: Row): FederatedBundleRow {
  return {
    trustDomain: r.trust_domain,
    json: r.json,
    sequence: r.sequence,
    updatedAt: r.updated_at,
  }
}

export function get(c: SqliteContext, trustDomain: string): FederatedBundleRow | undefined {
  checkNonEmpty('trustDomain', trustDomain)
  const r = st(c).get.get(trustDomain)
  return r && toRow(r)
}

export function set(c: SqliteContext, trustDomain: string, json: string, sequence: number): void {
  checkNonEmpty('trustDomain', trustDomain)
  checkJson('json', json)
  checkInt('sequence', sequence, 0)
  st(c).set.run(trustDomain, json, sequence, nowSeconds())
}

export function list(c: SqliteContext): FederatedBundleRow[] {
  return st(c).list.all().map(toRow)
}

export function remove(c: SqliteContext, trustDomain: string): void {
  checkNonEmpty('trustDomain', trustDomain)
  if (st(c).remove.run(trustDomain).changes === 0) {
    throw new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no bundle for ${trustDomain}`, {
      remedy: 'list them with `spiffe-edge server bundle list`',
    })
  }
}
