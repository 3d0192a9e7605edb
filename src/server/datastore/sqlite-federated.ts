/**
 * Bundles of federated trust domains and the federation relationships created through the admin
 * API, on SQLite. Statements are prepared here, per connection, so the shared statement table
 * (sqlite-statements.ts) stays about entries, nodes and tokens.
 */
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'
import { nowSeconds } from './sqlite-rows.js'
import type { SqliteContext } from './sqlite-statements.js'
import type { FederatedBundleRow, FederationRelationshipRow } from './types.js'
import { checkInt, checkJson, checkNonEmpty, checkSpiffeId, invalid } from './validate.js'

interface Row {
  trust_domain: string
  json: string
  sequence: number
  updated_at: number
}

interface RelRow {
  trust_domain: string
  bundle_endpoint_url: string
  profile: 'https_web' | 'https_spiffe'
  endpoint_spiffe_id: string
  created_at: number
  updated_at: number
}

type RelArgs = [string, string, string, string, number]

interface Statements {
  relGet: BetterSqlite3.Statement<[string], RelRow>
  relList: BetterSqlite3.Statement<[], RelRow>
  relCount: BetterSqlite3.Statement<[], { n: number }>
  relInsert: BetterSqlite3.Statement<[...RelArgs, number]>
  relUpdate: BetterSqlite3.Statement<[string, string, string, number, string]>
  relRemove: BetterSqlite3.Statement<[string]>
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
      relGet: c.db.prepare<[string], RelRow>(
        'SELECT * FROM federation_relationships WHERE trust_domain = ?',
      ),
      relList: c.db.prepare<[], RelRow>(
        'SELECT * FROM federation_relationships ORDER BY trust_domain',
      ),
      relCount: c.db.prepare<[], { n: number }>(
        'SELECT count(*) AS n FROM federation_relationships',
      ),
      relInsert: c.db.prepare<[...RelArgs, number]>(
        `INSERT INTO federation_relationships (trust_domain, bundle_endpoint_url, profile,
           endpoint_spiffe_id, updated_at, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
      ),
      relUpdate: c.db.prepare<[string, string, string, number, string]>(
        `UPDATE federation_relationships SET bundle_endpoint_url = ?, profile = ?,
           endpoint_spiffe_id = ?, updated_at = ? WHERE trust_domain = ?`,
      ),
      relRemove: c.db.prepare<[string]>(
        'DELETE FROM federation_relationships WHERE trust_domain = ?',
      ),
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

function toRel(r: RelRow): FederationRelationshipRow {
  return {
    trustDomain: r.trust_domain,
    bundleEndpointUrl: r.bundle_endpoint_url,
    profile: r.profile,
    endpointSpiffeId: r.endpoint_spiffe_id,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  }
}

function checkRel(r: FederationRelationshipInput): RelArgs {
  checkNonEmpty('trustDomain', r.trustDomain)
  checkNonEmpty('bundleEndpointUrl', r.bundleEndpointUrl)
  if (r.profile !== 'https_web' && r.profile !== 'https_spiffe')
    throw invalid('profile must be https_web or https_spiffe')
  if (r.profile === 'https_spiffe') checkSpiffeId('endpointSpiffeId', r.endpointSpiffeId)
  else if (r.endpointSpiffeId !== '') throw invalid('endpointSpiffeId is for https_spiffe only')
  return [r.trustDomain, r.bundleEndpointUrl, r.profile, r.endpointSpiffeId, nowSeconds()]
}

export type FederationRelationshipInput = Omit<FederationRelationshipRow, 'createdAt' | 'updatedAt'>

export function getRelationship(
  c: SqliteContext,
  trustDomain: string,
): FederationRelationshipRow | undefined {
  checkNonEmpty('trustDomain', trustDomain)
  const r = st(c).relGet.get(trustDomain)
  return r && toRel(r)
}

export function listRelationships(c: SqliteContext): FederationRelationshipRow[] {
  return st(c).relList.all().map(toRel)
}

/** ERR_DATASTORE_CONFLICT when it exists; ERR_DATASTORE_INVALID past `limit` relationships. */
export function createRelationship(
  c: SqliteContext,
  r: FederationRelationshipInput,
  limit: number,
): FederationRelationshipRow {
  const args = checkRel(r)
  return c.write(() => {
    // Counted in the write transaction: concurrent creates cannot pass the limit together.
    if (st(c).relGet.get(r.trustDomain))
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_CONFLICT',
        `a federation relationship with ${r.trustDomain} already exists`,
        { remedy: 'change it with `spiffe-edge server federation update`' },
      )
    if (st(c).relCount.get()!.n >= limit) throw invalid(`at most ${limit} federation relationships`)
    st(c).relInsert.run(...args, args[4])
    return toRel(st(c).relGet.get(r.trustDomain)!)
  })
}

/** ERR_DATASTORE_NOT_FOUND when it does not exist. */
export function updateRelationship(
  c: SqliteContext,
  r: FederationRelationshipInput,
): FederationRelationshipRow {
  const args = checkRel(r)
  return c.write(() => {
    const [td, url, profile, id, now] = args
    if (st(c).relUpdate.run(url, profile, id, now, td).changes === 0)
      throw relNotFound(r.trustDomain)
    return toRel(st(c).relGet.get(r.trustDomain)!)
  })
}

/** ERR_DATASTORE_NOT_FOUND when it does not exist. The foreign bundle stays (as SPIRE's). */
export function removeRelationship(c: SqliteContext, trustDomain: string): void {
  checkNonEmpty('trustDomain', trustDomain)
  if (st(c).relRemove.run(trustDomain).changes === 0) throw relNotFound(trustDomain)
}

function relNotFound(trustDomain: string): SpiffeEdgeError {
  return new SpiffeEdgeError(
    'ERR_DATASTORE_NOT_FOUND',
    `no federation relationship with ${trustDomain}`,
    { remedy: 'list them with `spiffe-edge server federation list`' },
  )
}
