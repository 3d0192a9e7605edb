/**
 * SQLite durability: old schemas migrated in place, and what a damaged file does. What survives a
 * reopen for any backend is in the conformance suite (test/helpers/datastore-conformance.ts).
 */
import assert from 'node:assert/strict'
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  type Datastore,
  type EntryInput,
  loadBetterSqlite3,
  migrations,
  openSqliteDatastore,
} from '../../src/server/datastore/index.js'

interface Backend {
  readonly name: string
  /** A store over persistent storage `where`; opening it again must see the same data. */
  open(where: string): Promise<Datastore>
  /** Fresh storage for one test, removed after it. */
  fresh(t: { after(fn: () => void): void }): string
}

const sqlite: Backend = {
  name: 'sqlite',
  open: (where) => openSqliteDatastore(where),
  fresh(t) {
    const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-ds-durable-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    return join(dir, 'ds.sqlite3')
  },
}

const AGENT = 'spiffe://example.org/spire/agent/join_token/abc'

function entry(i: number): EntryInput {
  return {
    spiffeId: `spiffe://example.org/workload/${i}/${'x'.repeat(200)}`,
    parentId: AGENT,
    selectors: [{ type: 'unix', value: `uid:${i}` }],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: '',
    federatesWith: [],
    admin: false,
    downstream: false,
    expiresAt: null,
  }
}

test('sqlite: a schema-1 database gains previous_cert_serial, keeping its nodes', async (t) => {
  const path = sqlite.fresh(t)
  const Db = loadBetterSqlite3()
  const db = new Db(path)
  db.exec(`CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL,
    applied_at INTEGER NOT NULL) STRICT`)
  db.exec(migrations[0]!.sql)
  db.prepare('INSERT INTO schema_version VALUES (1, ?, 0)').run(migrations[0]!.description)
  db.prepare(
    `INSERT INTO attested_nodes VALUES (?, 'join_token', '0a1b', 2000000000, 0, 0, 1, 1)`,
  ).run(AGENT)
  db.close()
  const ds = await openSqliteDatastore(path)
  t.after(() => ds.close())
  const got = await ds.getAttestedNode(AGENT)
  assert.equal(got?.certSerial, '0a1b')
  assert.equal(got?.previousCertSerial, '')
})

/** Fills a store past a few pages and closes it (WAL checkpointed into the main file). */
async function filledFile(t: { after(fn: () => void): void }): Promise<string> {
  const path = sqlite.fresh(t)
  const ds = await openSqliteDatastore(path)
  for (let i = 0; i < 300; i++) await ds.createEntry(entry(i))
  await ds.close()
  assert.ok(statSync(path).size > 20 * 4096, 'the file spans many pages')
  return path
}

/** Overwrites bytes in the middle of the file, leaving the header (page 1) intact. */
function damageMiddle(path: string): void {
  const size = statSync(path).size
  const fd = openSync(path, 'r+')
  try {
    const junk = Buffer.alloc(4096 * 4, 0xa5)
    writeSync(fd, junk, 0, junk.length, Math.floor(size / 2 / 4096) * 4096)
  } finally {
    closeSync(fd)
  }
}

test('sqlite: mid-file corruption is refused at open as ERR_DATASTORE_CORRUPT', async (t) => {
  const path = await filledFile(t)
  damageMiddle(path)
  await assert.rejects(openSqliteDatastore(path), (e: { code?: string; remedy?: string }) => {
    assert.equal(e.code, 'ERR_DATASTORE_CORRUPT')
    assert.match(e.remedy ?? '', /backup/)
    return true
  })
})

test('sqlite: corruption after open makes healthCheck fail, and it stays failed', async (t) => {
  const path = await filledFile(t)
  const ds = await openSqliteDatastore(path)
  t.after(() => ds.close())
  assert.deepEqual(await ds.healthCheck(), { ok: true })
  damageMiddle(path)
  // The check is rate-limited; wait out one interval.
  await new Promise((r) => setTimeout(r, 5100))
  const h = await ds.healthCheck()
  assert.equal(h.ok, false)
  assert.equal(!h.ok && h.error.code, 'ERR_DATASTORE_CORRUPT')
  assert.equal((await ds.healthCheck()).ok, false)
})
