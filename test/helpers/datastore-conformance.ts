/**
 * The datastore conformance suite: the contract of src/server/datastore/types.ts, checked through
 * the interface only, so every backend (SQLite now, PostgreSQL next) runs the same assertions.
 * Backend-specific behaviour (files, locks, corruption, migrations) stays in each backend's tests.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { SpiffeEdgeError } from '../../src/errors.js'
import type { EntryInput } from '../../src/server/datastore/index.js'
import { entryConformance } from './datastore-conformance-entries.js'
import {
  AGENT,
  type DatastoreBackend,
  entry,
  node,
  rejectsWith,
  storeRunner,
} from './datastore-fixtures.js'

export { type DatastoreBackend, rejectsWith } from './datastore-fixtures.js'

/** Registers every conformance test for backend `b`, named `${name}: ...`. */
export function runDatastoreConformance(name: string, b: DatastoreBackend): void {
  const withStore = storeRunner(b)
  entryConformance(name, b)

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
      // The same selectors again (a re-attestation): kept as they are, the rest updated; the same
      // ones in another order are stored in that order.
      const two = [
        { type: 'tpm', value: 'pcr:0:aa' },
        { type: 'tpm', value: 'pcr:1:bb' },
      ]
      await ds.updateAttestedNode(AGENT, { selectors: two })
      const same = await ds.updateAttestedNode(AGENT, { selectors: two, certSerial: 'fe' })
      assert.deepEqual([same.selectors, same.certSerial], [two, 'fe'])
      const reversed = [...two].reverse()
      await ds.updateAttestedNode(AGENT, { selectors: reversed })
      assert.deepEqual((await ds.getAttestedNode(AGENT))?.selectors, reversed)
      await ds.updateAttestedNode(AGENT, { selectors: [{ type: 'tpm', value: 'pcr:0:aa' }] })
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

  test(`${name}: saveAttestation writes the journal and the node together, or neither`, (t) =>
    withStore(t, async (ds) => {
      const n = node({ selectors: [{ type: 'tpm', value: 'ek-hash:ab' }] })
      await ds.saveAttestation(n, new Map([['attestor:tpm:/a', '{"clock":1}']]))
      assert.deepEqual(await ds.getAttestedNode(AGENT), n)
      assert.equal(await ds.getJournal('attestor:tpm:/a'), '{"clock":1}')
      // Again for the same agent: the record is replaced, not refused as a conflict.
      const again = { ...n, certSerial: 'ee', updatedAt: n.updatedAt + 1 }
      await ds.saveAttestation(again, new Map([['attestor:tpm:/a', '{"clock":2}']]))
      assert.deepEqual(await ds.getAttestedNode(AGENT), again)
      assert.equal(await ds.getJournal('attestor:tpm:/a'), '{"clock":2}')
      // A node that cannot be stored takes its journal write with it.
      await rejectsWith(
        ds.saveAttestation(
          { ...again, spiffeId: '' },
          new Map([['attestor:tpm:/a', '{"clock":3}']]),
        ),
        'ERR_DATASTORE_INVALID',
      )
      assert.equal(await ds.getJournal('attestor:tpm:/a'), '{"clock":2}')
    }))

  test(`${name}: saveAttestation never lifts a ban (one set while the agent attested)`, (t) =>
    withStore(t, async (ds) => {
      const n = node()
      await ds.saveAttestation(n, new Map())
      // An operator bans the agent (on this server or another replica) after the attestation
      // read the record and before it writes the new one.
      await ds.updateAttestedNode(AGENT, { banned: true })
      await rejectsWith(
        ds.saveAttestation(
          { ...n, certSerial: 'ee', updatedAt: n.updatedAt + 1 },
          new Map([['attestor:tpm:/a', '{"clock":9}']]),
        ),
        'ERR_DATASTORE_CONFLICT',
      )
      const kept = await ds.getAttestedNode(AGENT)
      assert.equal(kept?.banned, true)
      assert.equal(kept?.certSerial, n.certSerial)
      assert.equal(await ds.getJournal('attestor:tpm:/a'), undefined)
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
