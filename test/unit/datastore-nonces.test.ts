import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { loadBetterSqlite3 } from '../../src/server/datastore/index.js'
import { openSqliteDatastore } from '../../src/server/datastore/sqlite.js'

test('the replay cache is shared by two connections on one datastore file, expires, and keeps an answer', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-nonces-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'datastore.sqlite3')
  await using a = await openSqliteDatastore(file)
  await using b = await openSqliteDatastore(file)
  const now = 1_000_000
  assert.equal(await a.claimNonce('req:x', 'd1', now + 1000, now), undefined)
  // The other "replica" sees the claim: a replay to it is refused.
  assert.deepEqual(await b.claimNonce('req:x', 'd2', now + 1000, now + 1), { digest: 'd1' })
  await a.setNonceAnswer('req:x', new Uint8Array([1, 2, 3]))
  const again = await b.claimNonce('req:x', 'd1', now + 1000, now + 2)
  assert.deepEqual(again && [...(again.answer ?? [])], [1, 2, 3])
  // Expired: the key may be taken again, and pruning forgets it.
  assert.equal(await b.claimNonce('req:x', 'd3', now + 5000, now + 1000), undefined)
  assert.equal(await a.pruneNonces(now + 5000), 1)
  assert.equal(await a.claimNonce('req:x', 'd4', now + 9000, now + 5000), undefined)
})

test('claims made in one turn commit together, each still once: a duplicate in the same batch is refused, a refused claim does not undo the others', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-nonces-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'datastore.sqlite3')
  await using a = await openSqliteDatastore(file)
  await using b = await openSqliteDatastore(file)
  const now = 1_000_000
  const claims = await Promise.all([
    ...Array.from({ length: 300 }, (_, i) => a.claimNonce(`req:${i}`, 'a', now + 1000, now)),
    a.claimNonce('req:7', 'dup', now + 1000, now),
    a.claimNonce('', 'invalid', now + 1000, now).catch((e: { code: string }) => e.code),
    ...Array.from({ length: 300 }, (_, i) => b.claimNonce(`req:${i}`, 'b', now + 1000, now)),
  ])
  assert.deepEqual(claims.slice(0, 300), Array(300).fill(undefined))
  assert.deepEqual(claims[300], { digest: 'a' })
  assert.equal(claims[301], 'ERR_DATASTORE_INVALID')
  assert.deepEqual(claims.slice(302), Array(300).fill({ digest: 'a' }))
})

test('an attestation frame claim (sync: false) commits at once for every connection but is not fsynced, unless its batch holds a durable claim', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-nonces-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'datastore.sqlite3')
  await using a = await openSqliteDatastore(file)
  await using b = await openSqliteDatastore(file)
  // What each commit ran under: the claim batch switches the connection to NORMAL around it.
  const Db = loadBetterSqlite3()
  const pragma = Db.prototype.pragma
  const seen: string[] = []
  Db.prototype.pragma = function (this: unknown, s: string, ...rest: unknown[]) {
    seen.push(s)
    return (pragma as (...x: unknown[]) => unknown).call(this, s, ...rest)
  } as typeof pragma
  t.after(() => {
    Db.prototype.pragma = pragma
  })
  const now = 1_000_000
  assert.equal(await a.claimNonce('f:1', 'd', now + 1000, now, { sync: false }), undefined)
  assert.deepEqual(seen, ['synchronous = NORMAL', 'synchronous = FULL'])
  // Taken once all the same: the other connection (another replica) is refused.
  assert.deepEqual(await b.claimNonce('f:1', 'x', now + 1000, now, { sync: false }), {
    digest: 'd',
  })
  seen.length = 0
  // One durable claim in the batch: the whole batch is fsynced.
  const both = await Promise.all([
    a.claimNonce('f:2', 'd', now + 1000, now, { sync: false }),
    a.claimNonce('req:1', 'd', now + 1000, now),
  ])
  assert.deepEqual(both, [undefined, undefined])
  assert.deepEqual(seen, [])
  assert.deepEqual(await a.claimNonce('req:2', 'd', now + 1000, now), undefined)
  assert.deepEqual(seen, [])
})
