/**
 * Datastore durability: what survives a reopen (a server restart), and what a damaged file does.
 * The reopen cases take a `Backend` so a second datastore implementation can run them too (issue
 * 10); the corruption cases are about SQLite files.
 */
import assert from 'node:assert/strict'
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  type AttestedNode,
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

function node(overrides: Partial<AttestedNode> = {}): AttestedNode {
  return {
    spiffeId: AGENT,
    attestorType: 'join_token',
    selectors: [],
    certSerial: '0a1b',
    certNotAfter: 2_000_000_000,
    canReattest: false,
    banned: false,
    createdAt: 1_700_000_000,
    updatedAt: 1_700_000_000,
    ...overrides,
  }
}

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

export function durabilitySuite(b: Backend): void {
  test(`${b.name}: the serial RenewAgent replaced survives a reopen, until cleared`, async (t) => {
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

durabilitySuite(sqlite)

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
