/**
 * Join token use and its node alias entry are one datastore transaction: a failure injected into
 * the alias write (a SQLite trigger added from a second connection, on a real file) must leave the
 * token unspent and nothing written.
 */
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { hashJoinToken } from '../../src/attestors/join-token/server.js'
import type { AttestationContext } from '../../src/attestors/types.js'
import {
  type Datastore,
  loadBetterSqlite3,
  openSqliteDatastore,
} from '../../src/server/datastore/index.js'
import { aliasingJoinTokenAttestor } from '../../src/server/join-token-alias.js'

const TOKEN = 'tok-0123456789abcdef'
const AGENT = `spiffe://example.org/spire/agent/join_token/${TOKEN}`
const ALIAS = 'spiffe://example.org/node/web-1'

function ctx(): AttestationContext {
  return {
    trustDomain: 'example.org',
    now: new Date(1_000_000 * 1000),
    agentPublicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey,
    state: { get: async () => undefined, set: async () => {} },
  }
}

async function fileStore(t: { after(fn: () => void): void }): Promise<[Datastore, string]> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-alias-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'ds.sqlite')
  const ds = await openSqliteDatastore(path)
  t.after(() => ds.close())
  return [ds, path]
}

/** Makes every entry insert fail, from another connection, like a disk or constraint failure. */
function breakEntryInserts(path: string): () => void {
  const ctor = loadBetterSqlite3()
  const db = new ctor(path)
  db.exec(`CREATE TRIGGER fail_entry BEFORE INSERT ON entries
           BEGIN SELECT RAISE(ABORT, 'injected alias write failure'); END`)
  return () => {
    db.exec('DROP TRIGGER fail_entry')
    db.close()
  }
}

test('a failed alias write leaves the join token unspent and nothing written', async (t) => {
  const [ds, path] = await fileStore(t)
  await ds.createJoinToken({
    tokenHash: hashJoinToken(TOKEN),
    spiffeId: ALIAS,
    expiresAt: 2_000_000,
  })
  const attestor = aliasingJoinTokenAttestor(ds)
  const revision = await ds.currentRevision()

  const repair = breakEntryInserts(path)
  await assert.rejects(
    attestor.attest(Buffer.from(TOKEN), async (c) => c, ctx()),
    /injected/,
  )
  assert.deepEqual(await ds.listEntries(), [])
  assert.equal(await ds.currentRevision(), revision, 'no revision was taken')
  repair()

  // The token was not spent: the agent can attest again, and gets its alias this time.
  const result = await attestor.attest(Buffer.from(TOKEN), async (c) => c, ctx())
  assert.equal(`spiffe://example.org${result.agentPath}`, AGENT)
  const entries = await ds.listEntries()
  assert.equal(entries.length, 1)
  assert.equal(entries[0]?.spiffeId, ALIAS)
  assert.equal(entries[0]?.parentId, AGENT)
  assert.deepEqual(entries[0]?.selectors, [{ type: 'spiffe_id', value: AGENT }])
  // And now it is spent.
  await assert.rejects(
    attestor.attest(Buffer.from(TOKEN), async (c) => c, ctx()),
    /unknown, already used or expired/,
  )
  assert.equal((await ds.listEntries()).length, 1)
})

test('consumeJoinTokenForAgent rolls back on a failed alias insert (datastore level)', async (t) => {
  const [ds, path] = await fileStore(t)
  await ds.createJoinToken({ tokenHash: 'h', spiffeId: ALIAS, expiresAt: 100 })
  const repair = breakEntryInserts(path)
  await assert.rejects(ds.consumeJoinTokenForAgent('h', 1, AGENT), (e: unknown) => {
    assert.equal((e as { code?: string }).code, 'ERR_DATASTORE_IO')
    return true
  })
  repair()
  // Still there (consumeJoinToken would return it), and still carries its alias.
  assert.deepEqual(await ds.consumeJoinTokenForAgent('h', 1, AGENT), {
    spiffeId: ALIAS,
    aliasEntryId: (await ds.listEntries({ parentId: AGENT }))[0]?.id,
  })
})

test('a token without a spiffeId writes no alias; using it again changes nothing', async (t) => {
  const [ds] = await fileStore(t)
  await ds.createJoinToken({ tokenHash: hashJoinToken(TOKEN), expiresAt: 2_000_000 })
  const attestor = aliasingJoinTokenAttestor(ds)
  await attestor.attest(Buffer.from(TOKEN), async (c) => c, ctx())
  assert.deepEqual(await ds.listEntries(), [])
  await assert.rejects(attestor.attest(Buffer.from(TOKEN), async (c) => c, ctx()))
  assert.equal(await ds.currentRevision(), 0)
})
