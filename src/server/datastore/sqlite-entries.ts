/** Registration entries, their revisions and tombstones, on SQLite. */
import { randomUUID } from 'node:crypto'
import { SpiffeEdgeError } from '../../errors.js'
import { entryNotFound } from './sqlite-errors.js'
import { type EntryRow, entryParams, nowSeconds, selectorSetParam, toEntry } from './sqlite-rows.js'
import { ENTRY_SELECT, type SqliteContext, SUBSET_CLAUSE } from './sqlite-statements.js'
import type { EntryChanges, EntryFilter, EntryInput, RegistrationEntry } from './types.js'
import { checkInt, checkNonEmpty, selectorKey, validateEntryInput } from './validate.js'

const TOMBSTONE_HORIZON = 'tombstones_pruned_through'

export function createEntry(c: SqliteContext, e: EntryInput): RegistrationEntry {
  validateEntryInput(e)
  const id = randomUUID()
  c.write(() => {
    refuseDuplicate(c, e, id)
    const revision = nextRevision(c)
    c.st.insertEntry.run(entryParams(id, e, revision, nowSeconds()))
    insertEntryChildren(c, id, e)
  })
  return mustGetEntry(c, id)
}

export function updateEntry(c: SqliteContext, id: string, e: EntryInput): RegistrationEntry {
  checkNonEmpty('id', id)
  validateEntryInput(e)
  c.write(() => {
    if (!c.st.entryExists.get(id)) throw entryNotFound(id)
    refuseDuplicate(c, e, id)
    const revision = nextRevision(c)
    const { createdAt: _, ...params } = entryParams(id, e, revision, 0)
    c.st.updateEntry.run(params)
    c.st.deleteEntrySelectors.run(id)
    c.st.deleteDnsNames.run(id)
    c.st.deleteFederatesWith.run(id)
    insertEntryChildren(c, id, e)
  })
  return mustGetEntry(c, id)
}

export function deleteEntry(c: SqliteContext, id: string): void {
  checkNonEmpty('id', id)
  c.write(() => {
    if (!c.st.entryExists.get(id)) throw entryNotFound(id)
    deleteEntryWithTombstone(c, id)
  })
}

export function getEntry(c: SqliteContext, id: string): RegistrationEntry | undefined {
  checkNonEmpty('id', id)
  const row = c.st.getEntry.get(id)
  return row && toEntry(row)
}

export function listEntries(c: SqliteContext, filter: EntryFilter = {}): RegistrationEntry[] {
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
  let stmt = c.listCache.get(key)
  if (!stmt) {
    const sql = `${ENTRY_SELECT}${key ? ` WHERE ${key}` : ''} ORDER BY e.id`
    stmt = c.db.prepare<[Record<string, string>], EntryRow>(sql)
    c.listCache.set(key, stmt)
  }
  return stmt.all(params).map(toEntry)
}

export function entryChangesSince(c: SqliteContext, revision: number): EntryChanges {
  checkInt('revision', revision, 0)
  // One read transaction: the revision, upserts and tombstones come from the same snapshot.
  const read = c.db.transaction((): EntryChanges => {
    const current = currentRevision(c)
    const horizon = c.st.getMeta.get(TOMBSTONE_HORIZON)?.value ?? 0
    if (revision < horizon || revision > current) {
      const upserted = c.st.allEntriesByRevision.all().map(toEntry)
      return { revision: current, upserted, deleted: [], resync: true }
    }
    return {
      revision: current,
      upserted: c.st.entriesSince.all(revision).map(toEntry),
      deleted: c.st.tombstonesSince.all(revision).map((r) => r.id),
    }
  })
  return read.deferred()
}

export function pruneExpiredEntries(c: SqliteContext, now: number): number {
  checkInt('now', now)
  return c.write(() => {
    const ids = c.st.expiredEntries.all(now).map((r) => r.id)
    for (const id of ids) deleteEntryWithTombstone(c, id)
    return ids.length
  })
}

export function pruneEntryTombstones(c: SqliteContext, throughRevision: number): number {
  checkInt('throughRevision', throughRevision, 0)
  return c.write(() => {
    // Never past the current revision, or up-to-date callers would be told to resync.
    const through = Math.min(throughRevision, currentRevision(c))
    const removed = c.st.pruneTombstones.run(through).changes
    const horizon = c.st.getMeta.get(TOMBSTONE_HORIZON)?.value ?? 0
    if (through > horizon) c.st.setMeta.run(TOMBSTONE_HORIZON, through)
    return removed
  })
}

export function currentRevision(c: SqliteContext): number {
  const row = c.st.currentRevision.get()
  if (!row) throw revisionCounterMissing()
  return row.value
}

export function nextRevision(c: SqliteContext): number {
  const row = c.st.nextRevision.get()
  if (!row) throw revisionCounterMissing()
  return row.value
}

export function refuseDuplicate(c: SqliteContext, e: EntryInput, id: string): void {
  const dup = c.st.findDuplicate.get(e.spiffeId, e.parentId, selectorKey(e.selectors), id)
  if (dup) {
    throw new SpiffeEdgeError(
      'ERR_DATASTORE_CONFLICT',
      `entry ${dup.id} already has this spiffeId, parentId and selector set`,
      { remedy: 'update that entry instead, or change the selectors' },
    )
  }
}

export function insertEntryChildren(c: SqliteContext, id: string, e: EntryInput): void {
  for (const [i, s] of e.selectors.entries()) {
    c.st.insertEntrySelector.run(id, i, s.type, s.value)
  }
  for (const [i, d] of e.dnsNames.entries()) c.st.insertDnsName.run(id, i, d)
  for (const [i, f] of e.federatesWith.entries()) c.st.insertFederatesWith.run(id, i, f)
}

export function deleteEntryWithTombstone(c: SqliteContext, id: string): void {
  const revision = nextRevision(c)
  c.st.deleteEntry.run(id)
  c.st.insertTombstone.run(id, revision)
}

export function mustGetEntry(c: SqliteContext, id: string): RegistrationEntry {
  const row = c.st.getEntry.get(id)
  if (!row) throw entryNotFound(id)
  return toEntry(row)
}

/** The one-row revision counter is created by migration 1: without it the file was tampered with. */
function revisionCounterMissing(): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_CORRUPT', 'the revision_counter row is missing', {
    remedy: 'restore the datastore from backup; the file was changed outside spiffe-edge',
  })
}
