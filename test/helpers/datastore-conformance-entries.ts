/** Conformance, part 1: registration entries, revisions and tombstones, through the interface. */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  AGENT,
  type DatastoreBackend,
  entry,
  rejectsWith,
  storeRunner,
} from './datastore-fixtures.js'

export function entryConformance(name: string, b: DatastoreBackend): void {
  const withStore = storeRunner(b)

  test(`${name}: entry CRUD round-trips every field and keeps id and createdAt across updates`, (t) =>
    withStore(t, async (ds) => {
      const input = entry()
      const created = await ds.createEntry(input)
      assert.match(created.id, /^[0-9a-f-]{36}$/)
      assert.equal(created.revision, 1)
      assert.ok(Math.abs(created.createdAt - Date.now() / 1000) < 60)
      const { id, revision, createdAt, ...rest } = created
      assert.deepEqual(rest, input)
      assert.deepEqual(await ds.getEntry(id), created)

      const changed = entry({
        selectors: [{ type: 'docker', value: 'label:com.example.name:foo' }],
        dnsNames: [],
        federatesWith: [],
        admin: true,
        downstream: true,
        expiresAt: 1_900_000_000,
        hint: '',
        x509SvidTtl: 0,
      })
      const updated = await ds.updateEntry(id, changed)
      assert.equal(updated.id, id)
      assert.equal(updated.createdAt, createdAt)
      assert.ok(updated.revision > revision)
      const { id: _i, revision: _r, createdAt: _c, ...updatedRest } = updated
      assert.deepEqual(updatedRest, changed)
      assert.deepEqual(await ds.getEntry(id), updated)

      await ds.deleteEntry(id)
      assert.equal(await ds.getEntry(id), undefined)
      assert.deepEqual(await ds.listEntries(), [])
    }))

  test(`${name}: not found: update, delete, get of a missing or deleted entry`, (t) =>
    withStore(t, async (ds) => {
      const missing = '00000000-0000-4000-8000-000000000000'
      await rejectsWith(ds.updateEntry(missing, entry()), 'ERR_DATASTORE_NOT_FOUND')
      await rejectsWith(ds.deleteEntry(missing), 'ERR_DATASTORE_NOT_FOUND')
      assert.equal(await ds.getEntry(missing), undefined)
      const e = await ds.createEntry(entry())
      await ds.deleteEntry(e.id)
      await rejectsWith(ds.deleteEntry(e.id), 'ERR_DATASTORE_NOT_FOUND')
      await rejectsWith(ds.updateEntry(e.id, entry()), 'ERR_DATASTORE_NOT_FOUND')
      // A refused write takes no revision.
      assert.equal(await ds.currentRevision(), 2)
    }))

  test(`${name}: duplicates (same spiffeId, parentId and selector set, any order) are a conflict`, (t) =>
    withStore(t, async (ds) => {
      const a = await ds.createEntry(entry())
      const reordered = entry({ selectors: [...entry().selectors].reverse(), hint: 'other' })
      await rejectsWith(ds.createEntry(reordered), 'ERR_DATASTORE_CONFLICT')
      // Any of the three differing makes a distinct entry.
      const b = await ds.createEntry(entry({ parentId: 'spiffe://example.org/spire/server' }))
      await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/other' }))
      await ds.createEntry(entry({ selectors: [{ type: 'unix', value: 'uid:1000' }] }))
      // Updating b into a's identity is a conflict too; updating a onto itself is not.
      await rejectsWith(ds.updateEntry(b.id, entry()), 'ERR_DATASTORE_CONFLICT')
      await ds.updateEntry(a.id, reordered)
      assert.equal((await ds.listEntries()).length, 4)
      assert.equal(await ds.currentRevision(), 5)
    }))

  test(`${name}: revisions are monotonic and entryChangesSince returns upserts and tombstones`, (t) =>
    withStore(t, async (ds) => {
      assert.equal(await ds.currentRevision(), 0)
      const a = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/a' }))
      const b = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/b' }))
      const a2 = await ds.updateEntry(
        a.id,
        entry({ spiffeId: 'spiffe://example.org/a', hint: 'x' }),
      )
      await ds.deleteEntry(b.id)
      const c = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/c' }))
      assert.deepEqual(
        [a.revision, b.revision, a2.revision, c.revision],
        [1, 2, 3, 5],
        'the delete took revision 4',
      )
      assert.equal(await ds.currentRevision(), 5)

      const all = await ds.entryChangesSince(0)
      assert.equal(all.revision, 5)
      assert.deepEqual(
        all.upserted.map((e) => e.id),
        [a.id, c.id],
      )
      assert.equal(all.upserted[0]?.hint, 'x')
      assert.deepEqual(all.deleted, [b.id])
      assert.equal(all.resync, undefined)

      const since3 = await ds.entryChangesSince(3)
      assert.deepEqual(
        since3.upserted.map((e) => e.id),
        [c.id],
      )
      assert.deepEqual(since3.deleted, [b.id])

      const since4 = await ds.entryChangesSince(4)
      assert.deepEqual(since4.deleted, [])
      assert.deepEqual(await ds.entryChangesSince(5), { revision: 5, upserted: [], deleted: [] })

      // Ahead of the store (restored from an older backup): the caller must resync.
      const ahead = await ds.entryChangesSince(99)
      assert.equal(ahead.resync, true)
      assert.equal(ahead.upserted.length, 2)
    }))

  test(`${name}: pruned tombstones force callers from before the horizon to resync`, (t) =>
    withStore(t, async (ds) => {
      const a = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/a' }))
      const b = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/b' }))
      await ds.deleteEntry(a.id)
      await ds.deleteEntry(b.id)
      const keep = await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/k' }))
      assert.equal(await ds.pruneEntryTombstones(3), 1)
      const old = await ds.entryChangesSince(2)
      assert.equal(old.resync, true)
      assert.deepEqual(
        old.upserted.map((e) => e.id),
        [keep.id],
      )
      assert.deepEqual(old.deleted, [])
      const recent = await ds.entryChangesSince(3)
      assert.equal(recent.resync, undefined)
      assert.deepEqual(recent.deleted, [b.id])
      // The horizon never passes the current revision: an up-to-date caller stays incremental.
      await ds.pruneEntryTombstones(1000)
      assert.equal((await ds.entryChangesSince(5)).resync, undefined)
    }))

  test(`${name}: pruneExpiredEntries deletes expired entries with tombstones and new revisions`, (t) =>
    withStore(t, async (ds) => {
      const gone = await ds.createEntry(
        entry({ spiffeId: 'spiffe://example.org/a', expiresAt: 100 }),
      )
      const kept = await ds.createEntry(
        entry({ spiffeId: 'spiffe://example.org/b', expiresAt: 200 }),
      )
      await ds.createEntry(entry({ spiffeId: 'spiffe://example.org/c' }))
      assert.equal(await ds.pruneExpiredEntries(150), 1)
      assert.equal(await ds.getEntry(gone.id), undefined)
      assert.ok(await ds.getEntry(kept.id))
      const ch = await ds.entryChangesSince(3)
      assert.deepEqual(ch.deleted, [gone.id])
      assert.equal(ch.revision, 4)
    }))

  test(`${name}: listEntries filters by parentId, spiffeId and selector subset, sorted by id`, (t) =>
    withStore(t, async (ds) => {
      const a = { type: 'unix', value: 'uid:0' }
      const b = { type: 'k8s', value: 'ns:default' }
      const c = { type: 'docker', value: 'label:a:b' }
      const ab = await ds.createEntry(
        entry({ spiffeId: 'spiffe://example.org/ab', selectors: [a, b] }),
      )
      const onlyA = await ds.createEntry(
        entry({ spiffeId: 'spiffe://example.org/a', selectors: [a] }),
      )
      const other = await ds.createEntry(
        entry({ parentId: 'spiffe://example.org/spire/server', selectors: [c] }),
      )
      const ids = (es: { id: string }[]) => es.map((e) => e.id)
      const sorted = (...xs: { id: string }[]) => xs.map((e) => e.id).sort()

      assert.deepEqual(ids(await ds.listEntries()), sorted(ab, onlyA, other))
      assert.deepEqual(ids(await ds.listEntries({ parentId: AGENT })), sorted(ab, onlyA))
      assert.deepEqual(
        ids(await ds.listEntries({ spiffeId: 'spiffe://example.org/ab' })),
        sorted(ab),
      )
      // {a,b} ⊆ {a,b,c}; {a,b} ⊄ {a}.
      assert.deepEqual(
        ids(await ds.listEntries({ selectorsSubsetOf: [a, b, c] })),
        sorted(ab, onlyA, other),
      )
      assert.deepEqual(ids(await ds.listEntries({ selectorsSubsetOf: [a] })), sorted(onlyA))
      assert.deepEqual(ids(await ds.listEntries({ selectorsSubsetOf: [b] })), [])
      assert.deepEqual(ids(await ds.listEntries({ selectorsSubsetOf: [] })), [])
      // Duplicates in the caller's set do not inflate the match count.
      assert.deepEqual(ids(await ds.listEntries({ selectorsSubsetOf: [a, a, a] })), sorted(onlyA))
      // Type and value must both match: same value under another type is not a match.
      assert.deepEqual(
        ids(await ds.listEntries({ selectorsSubsetOf: [{ type: 'k8s', value: 'uid:0' }, b] })),
        [],
      )
      assert.deepEqual(
        ids(await ds.listEntries({ parentId: AGENT, selectorsSubsetOf: [a, b, c] })),
        sorted(ab, onlyA),
      )
      assert.deepEqual(
        ids(
          await ds.listEntries({
            parentId: AGENT,
            spiffeId: 'spiffe://example.org/a',
            selectorsSubsetOf: [a, b],
          }),
        ),
        sorted(onlyA),
      )
    }))
}
