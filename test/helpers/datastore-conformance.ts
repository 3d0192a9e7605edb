/**
 * The datastore conformance suite: the contract of src/server/datastore/types.ts, checked through
 * the interface only, so every backend (SQLite now, PostgreSQL next) runs the same assertions.
 * Backend-specific behaviour (files, locks, corruption, migrations) stays in each backend's tests.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { ErrorCode } from '../../src/errors.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import type { AttestedNode, Datastore, EntryInput } from '../../src/server/datastore/index.js'

type TestContext = { after(fn: () => void | Promise<void>): void }

export interface DatastoreBackend {
  /** Fresh, empty storage for one test (removed after it); what `open` takes. */
  fresh(t: TestContext): string
  /** A store over `where`; opening the same `where` again must see the same data. */
  open(where: string): Promise<Datastore>
}

const AGENT = 'spiffe://example.org/spire/agent/join_token/abc'

function entry(overrides: Partial<EntryInput> = {}): EntryInput {
  return {
    spiffeId: 'spiffe://example.org/workload',
    parentId: AGENT,
    selectors: [
      { type: 'unix', value: 'uid:1000' },
      { type: 'unix', value: 'gid:1000' },
    ],
    x509SvidTtl: 3600,
    jwtSvidTtl: 300,
    dnsNames: ['w.example.org', 'alt.example.org'],
    hint: 'internal',
    federatesWith: ['spiffe://other.org'],
    admin: false,
    downstream: false,
    expiresAt: null,
    ...overrides,
  }
}

function node(overrides: Partial<AttestedNode> = {}): AttestedNode {
  return {
    spiffeId: AGENT,
    attestorType: 'join_token',
    selectors: [],
    certSerial: '0a1b',
    previousCertSerial: '',
    certNotAfter: 2_000_000_000,
    canReattest: false,
    banned: false,
    createdAt: 1_700_000_000,
    updatedAt: 1_700_000_000,
    ...overrides,
  }
}

export async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof SpiffeEdgeError, `expected SpiffeEdgeError, got ${String(e)}`)
    assert.equal(e.code, code, e.message)
    assert.ok(e.remedy, 'every datastore error carries a remedy')
    return true
  })
}

export function runDatastoreConformance(name: string, b: DatastoreBackend): void {
  async function withStore(t: TestContext, fn: (ds: Datastore) => Promise<void>): Promise<void> {
    const ds = await b.open(b.fresh(t))
    try {
      await fn(ds)
    } finally {
      await ds.close()
    }
  }

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

  test(`${name}: attested nodes: create, get, conflict, ban, patch, list, delete`, (t) =>
    withStore(t, async (ds) => {
      const n = node({ selectors: [{ type: 'tpm', value: 'ek-hash:ab' }] })
      await ds.createAttestedNode(n)
      assert.deepEqual(await ds.getAttestedNode(AGENT), n)
      await rejectsWith(ds.createAttestedNode(n), 'ERR_DATASTORE_CONFLICT')

      const banned = await ds.updateAttestedNode(AGENT, { banned: true })
      assert.equal(banned.banned, true)
      assert.equal(banned.certSerial, n.certSerial)
      assert.deepEqual(banned.selectors, n.selectors, 'selectors kept when not patched')
      assert.ok(banned.updatedAt > n.updatedAt, 'updatedAt defaults to now')
      assert.deepEqual(await ds.getAttestedNode(AGENT), banned)

      const renewed = await ds.updateAttestedNode(AGENT, {
        banned: false,
        certSerial: 'ff',
        certNotAfter: 2_100_000_000,
        selectors: [{ type: 'tpm', value: 'pcr:0:aa' }],
        updatedAt: 1_800_000_000,
      })
      assert.deepEqual(renewed, {
        ...n,
        certSerial: 'ff',
        certNotAfter: 2_100_000_000,
        selectors: [{ type: 'tpm', value: 'pcr:0:aa' }],
        updatedAt: 1_800_000_000,
      })
      await rejectsWith(
        ds.updateAttestedNode(AGENT, { spiffeId: 'spiffe://example.org/else' }),
        'ERR_DATASTORE_INVALID',
      )
      await rejectsWith(
        ds.updateAttestedNode(AGENT, { certNotAfter: 1.5 }),
        'ERR_DATASTORE_INVALID',
      )
      await rejectsWith(
        ds.updateAttestedNode('spiffe://example.org/nope', { banned: true }),
        'ERR_DATASTORE_NOT_FOUND',
      )

      const second = node({ spiffeId: 'spiffe://example.org/spire/agent/x509pop/01' })
      await ds.createAttestedNode(second)
      assert.deepEqual(
        (await ds.listAttestedNodes()).map((x) => x.spiffeId),
        [AGENT, second.spiffeId].sort(),
      )
      await ds.deleteAttestedNode(AGENT)
      assert.equal(await ds.getAttestedNode(AGENT), undefined)
      await rejectsWith(ds.deleteAttestedNode(AGENT), 'ERR_DATASTORE_NOT_FOUND')
      // Its selectors went with it: re-creating with the same selectors is fine.
      await ds.createAttestedNode(n)
      assert.deepEqual(await ds.getAttestedNode(AGENT), n)
    }))

  test(`${name}: join tokens are single use; expired ones are refused and deleted`, (t) =>
    withStore(t, async (ds) => {
      await ds.createJoinToken({ tokenHash: 'h1', spiffeId: AGENT, expiresAt: 1000 })
      await ds.createJoinToken({ tokenHash: 'h2', expiresAt: 1000 })
      await rejectsWith(
        ds.createJoinToken({ tokenHash: 'h1', expiresAt: 5 }),
        'ERR_DATASTORE_CONFLICT',
      )

      assert.deepEqual(await ds.consumeJoinToken('h1', 500), { spiffeId: AGENT })
      assert.equal(await ds.consumeJoinToken('h1', 500), undefined)
      assert.deepEqual(await ds.consumeJoinToken('h2', 999), {})
      assert.equal(await ds.consumeJoinToken('never', 0), undefined)

      // Expired (now >= expiresAt): refused, and gone even for a later "earlier now".
      await ds.createJoinToken({ tokenHash: 'h3', expiresAt: 1000 })
      assert.equal(await ds.consumeJoinToken('h3', 1000), undefined)
      assert.equal(await ds.consumeJoinToken('h3', 1), undefined)

      // Racing consumers: exactly one wins.
      await ds.createJoinToken({ tokenHash: 'race', expiresAt: 1000 })
      const results = await Promise.all(
        Array.from({ length: 8 }, () => ds.consumeJoinToken('race', 1)),
      )
      assert.equal(results.filter((r) => r !== undefined).length, 1)

      await ds.createJoinToken({ tokenHash: 'old1', expiresAt: 10 })
      await ds.createJoinToken({ tokenHash: 'old2', expiresAt: 20 })
      await ds.createJoinToken({ tokenHash: 'new', expiresAt: 30 })
      assert.equal(await ds.pruneJoinTokens(20), 2)
      assert.equal(await ds.pruneJoinTokens(20), 0)
      assert.deepEqual(await ds.consumeJoinToken('new', 25), {})
    }))

  test(`${name}: consumeJoinTokenForAgent spends the token and writes its alias entry together`, (t) =>
    withStore(t, async (ds) => {
      const alias = 'spiffe://example.org/node/a'
      await ds.createJoinToken({ tokenHash: 'a1', spiffeId: alias, expiresAt: 100 })
      await ds.createJoinToken({ tokenHash: 'a2', expiresAt: 100 })
      await ds.createJoinToken({ tokenHash: 'a3', spiffeId: alias, expiresAt: 100 })
      const before = await ds.currentRevision()

      const got = await ds.consumeJoinTokenForAgent('a1', 1, AGENT)
      assert.equal(got?.spiffeId, alias)
      const e = got?.aliasEntryId ? await ds.getEntry(got.aliasEntryId) : undefined
      assert.ok(e, 'the alias entry exists')
      assert.equal(e.spiffeId, alias)
      assert.equal(e.parentId, AGENT)
      assert.deepEqual(e.selectors, [{ type: 'spiffe_id', value: AGENT }])
      assert.equal(e.revision, before + 1)
      assert.equal(await ds.consumeJoinTokenForAgent('a1', 1, AGENT), undefined)
      assert.equal(await ds.consumeJoinToken('a1', 1), undefined)

      // No spiffeId: spent, no entry. Expired: refused and deleted, no entry.
      assert.deepEqual(await ds.consumeJoinTokenForAgent('a2', 1, AGENT), {})
      await ds.createJoinToken({ tokenHash: 'a4', spiffeId: alias, expiresAt: 10 })
      assert.equal(await ds.consumeJoinTokenForAgent('a4', 10, AGENT), undefined)
      assert.equal(await ds.consumeJoinToken('a4', 1), undefined)
      assert.equal((await ds.listEntries()).length, 1)

      // An identical alias already there is reused, not a conflict.
      const again = await ds.consumeJoinTokenForAgent('a3', 1, AGENT)
      assert.deepEqual(again, { spiffeId: alias, aliasEntryId: got?.aliasEntryId })
      assert.equal((await ds.listEntries()).length, 1)

      // Racing consumers: exactly one wins, one alias.
      await ds.createJoinToken({
        tokenHash: 'ar',
        spiffeId: 'spiffe://example.org/node/r',
        expiresAt: 100,
      })
      const results = await Promise.all(
        Array.from({ length: 8 }, () => ds.consumeJoinTokenForAgent('ar', 1, `${AGENT}r`)),
      )
      assert.equal(results.filter((r) => r !== undefined).length, 1)
      assert.equal((await ds.listEntries({ parentId: `${AGENT}r` })).length, 1)

      await rejectsWith(ds.consumeJoinTokenForAgent('x', 1, ''), 'ERR_DATASTORE_INVALID')
    }))

  test(`${name}: bundles and CA journal round-trip and overwrite`, (t) =>
    withStore(t, async (ds) => {
      assert.equal(await ds.getBundle('example.org'), undefined)
      await ds.setBundle('example.org', '{"keys":[]}', 1)
      assert.deepEqual(await ds.getBundle('example.org'), { json: '{"keys":[]}', sequence: 1 })
      await ds.setBundle('example.org', '{"keys":[{"kty":"EC"}]}', 2)
      assert.deepEqual(await ds.getBundle('example.org'), {
        json: '{"keys":[{"kty":"EC"}]}',
        sequence: 2,
      })
      assert.equal(await ds.getBundle('other.org'), undefined)

      assert.equal(await ds.getJournal('x509'), undefined)
      await ds.setJournal('x509', '{"entries":[1]}')
      await ds.setJournal('jwt', '{"entries":[2]}')
      await ds.setJournal('x509', '{"entries":[1,3]}')
      assert.equal(await ds.getJournal('x509'), '{"entries":[1,3]}')
      assert.equal(await ds.getJournal('jwt'), '{"entries":[2]}')
    }))

  test(`${name}: invalid inputs are ERR_DATASTORE_INVALID and store nothing`, (t) =>
    withStore(t, async (ds) => {
      const bad: [string, Partial<EntryInput>][] = [
        ['negative TTL', { x509SvidTtl: -1 }],
        ['fractional TTL', { jwtSvidTtl: 1.5 }],
        ['huge TTL', { x509SvidTtl: 2 ** 31 }],
        ['no selectors', { selectors: [] }],
        ['colon in type', { selectors: [{ type: 'unix:uid', value: '0' }] }],
        ['empty type', { selectors: [{ type: '', value: '0' }] }],
        ['empty value', { selectors: [{ type: 'unix', value: '' }] }],
        [
          'duplicate selector',
          {
            selectors: [
              { type: 'unix', value: 'uid:0' },
              { type: 'unix', value: 'uid:0' },
            ],
          },
        ],
        ['bad spiffeId', { spiffeId: 'https://example.org/x' }],
        ['uppercase trust domain', { spiffeId: 'spiffe://Example.org/x' }],
        ['dot segment', { parentId: 'spiffe://example.org/a/../b' }],
        ['empty dns name', { dnsNames: [''] }],
        ['duplicate federatesWith', { federatesWith: ['a', 'a'] }],
        ['fractional expiresAt', { expiresAt: 1.5 }],
        ['non-boolean admin', { admin: 'yes' as unknown as boolean }],
      ]
      for (const [why, overrides] of bad) {
        await assert.rejects(ds.createEntry(entry(overrides)), (e: unknown) => {
          assert.ok(e instanceof SpiffeEdgeError, why)
          assert.equal(e.code, 'ERR_DATASTORE_INVALID', why)
          return true
        })
      }
      assert.equal(await ds.currentRevision(), 0)
      assert.deepEqual(await ds.listEntries(), [])

      await rejectsWith(ds.createAttestedNode(node({ attestorType: '' })), 'ERR_DATASTORE_INVALID')
      await rejectsWith(
        ds.createJoinToken({ tokenHash: '', expiresAt: 1 }),
        'ERR_DATASTORE_INVALID',
      )
      await rejectsWith(ds.setBundle('example.org', 'not json', 1), 'ERR_DATASTORE_INVALID')
      await rejectsWith(ds.setBundle('example.org', '{}', -1), 'ERR_DATASTORE_INVALID')
      await rejectsWith(ds.setJournal('x509', '{'), 'ERR_DATASTORE_INVALID')
      await rejectsWith(ds.entryChangesSince(-1), 'ERR_DATASTORE_INVALID')
      await rejectsWith(
        ds.listEntries({ selectorsSubsetOf: [{ type: 'unix' } as never] }),
        'ERR_DATASTORE_INVALID',
      )
    }))

  test(`${name}: a closed datastore rejects every call with ERR_DATASTORE_CLOSED; close is idempotent`, async (t) => {
    const ds = await b.open(b.fresh(t))
    await ds[Symbol.asyncDispose]()
    await ds.close()
    await rejectsWith(ds.listEntries(), 'ERR_DATASTORE_CLOSED')
    await rejectsWith(ds.createEntry(entry()), 'ERR_DATASTORE_CLOSED')
  })

  test(`${name}: the serial RenewAgent replaced survives a reopen, until cleared`, async (t) => {
    const where = b.fresh(t)
    const first = await b.open(where)
    await first.createAttestedNode(node())
    await first.updateAttestedNode(AGENT, { certSerial: '0c0d', previousCertSerial: '0a1b' })
    await first.close()
    const second = await b.open(where)
    t.after(() => second.close())
    const got = await second.getAttestedNode(AGENT)
    assert.equal(got?.certSerial, '0c0d')
    assert.equal(got?.previousCertSerial, '0a1b')
    // A patch that does not mention it keeps it; clearing it is explicit.
    await second.updateAttestedNode(AGENT, { banned: false })
    assert.equal((await second.getAttestedNode(AGENT))?.previousCertSerial, '0a1b')
    await second.updateAttestedNode(AGENT, { previousCertSerial: '' })
    assert.equal((await second.getAttestedNode(AGENT))?.previousCertSerial, '')
  })
}
