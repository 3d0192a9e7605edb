import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  LATEST_SCHEMA_VERSION,
  loadBetterSqlite3,
  migrations,
  openSqliteDatastore,
} from '../../src/server/datastore/index.js'
import { rejectsWith, runDatastoreConformance } from '../helpers/datastore-conformance.js'
import { entry } from '../helpers/datastore-fixtures.js'

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-ds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

// Everything the Datastore interface promises, on an on-disk SQLite file (the PostgreSQL backend
// runs the same suite). What follows is SQLite's own: migrations, files, locks, paths.
runDatastoreConformance('sqlite', {
  fresh: (t) => join(tempDir(t), 'ds.sqlite'),
  open: (where) => openSqliteDatastore(where),
})

test('migrations are numbered 1..n in order', () => {
  assert.deepEqual(
    migrations.map((m) => m.version),
    migrations.map((_, i) => i + 1),
  )
  assert.equal(LATEST_SCHEMA_VERSION, migrations.length)
})

test('reopening applies no migration twice and keeps the data', async (t) => {
  const path = join(tempDir(t), 'nested', 'ds.sqlite')
  const first = await openSqliteDatastore(path)
  const e = await first.createEntry(entry())
  await first.close()
  for (let i = 0; i < 2; i++) {
    const again = await openSqliteDatastore(path)
    assert.deepEqual(await again.getEntry(e.id), e)
    assert.equal(await again.currentRevision(), 1)
    await again.close()
  }
  const Database = loadBetterSqlite3()
  const db = new Database(path, { readonly: true })
  try {
    const rows = db.prepare('SELECT version FROM schema_version ORDER BY version').all()
    assert.deepEqual(
      rows,
      migrations.map((m) => ({ version: m.version })),
    )
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal')
  } finally {
    db.close()
  }
})

test('a database from a newer schema version is refused with ERR_DATASTORE_VERSION', async (t) => {
  const path = join(tempDir(t), 'ds.sqlite')
  await (await openSqliteDatastore(path)).close()
  const Database = loadBetterSqlite3()
  const db = new Database(path)
  db.prepare('INSERT INTO schema_version VALUES (?, ?, ?)').run(
    LATEST_SCHEMA_VERSION + 1,
    'from the future',
    0,
  )
  db.close()
  await rejectsWith(openSqliteDatastore(path), 'ERR_DATASTORE_VERSION')
})

test('a SQLite file that is not ours, or not SQLite at all, is refused', async (t) => {
  const dir = tempDir(t)
  const Database = loadBetterSqlite3()
  const foreign = join(dir, 'foreign.sqlite')
  const db = new Database(foreign)
  db.exec('CREATE TABLE something (x)')
  db.close()
  await rejectsWith(openSqliteDatastore(foreign), 'ERR_DATASTORE_VERSION')

  const junk = join(dir, 'junk.sqlite')
  writeFileSync(junk, 'x'.repeat(4096))
  await rejectsWith(openSqliteDatastore(junk), 'ERR_DATASTORE_CORRUPT')
})

test('a second process-level handle waits for the lock, then fails as ERR_DATASTORE_BUSY', async (t) => {
  const path = join(tempDir(t), 'ds.sqlite')
  const a = await openSqliteDatastore(path, { busyTimeoutMs: 50 })
  const b = await openSqliteDatastore(path, { busyTimeoutMs: 50 })
  try {
    const Database = loadBetterSqlite3()
    const locker = new Database(path)
    locker.exec('BEGIN IMMEDIATE')
    try {
      await rejectsWith(b.createEntry(entry()), 'ERR_DATASTORE_BUSY')
    } finally {
      locker.exec('ROLLBACK')
      locker.close()
    }
    await b.createEntry(entry())
    assert.equal((await a.listEntries()).length, 1, 'writes by one handle are seen by the other')
  } finally {
    await a.close()
    await b.close()
  }
})

test('paths that are not plain file paths are refused', async () => {
  await rejectsWith(openSqliteDatastore(''), 'ERR_DATASTORE_INVALID')
  await rejectsWith(openSqliteDatastore('file:x.db?mode=memory'), 'ERR_DATASTORE_INVALID')
  await rejectsWith(openSqliteDatastore(':memory:', { busyTimeoutMs: -1 }), 'ERR_DATASTORE_INVALID')
})

test('deleted rows leave no bytes in the file (secure_delete)', async (t) => {
  const path = join(tempDir(t), 'ds.sqlite')
  const hash = `${'5ec7e7'.repeat(10)}cafe`
  const gone = 'spiffe://example.org/deleted-workload-marker'
  const kept = 'spiffe://example.org/kept-workload-marker'
  let ds = await openSqliteDatastore(path)
  await ds.createJoinToken({ tokenHash: hash, expiresAt: 100 })
  const e = await ds.createEntry(entry({ spiffeId: gone }))
  await ds.createEntry(entry({ spiffeId: kept }))
  await ds.close() // the last close checkpoints the WAL into the file
  const file = () => readFileSync(path)
  assert.ok(file().includes(hash), 'the token hash is written to the file')
  assert.ok(file().includes(gone))

  ds = await openSqliteDatastore(path)
  assert.deepEqual(await ds.consumeJoinToken(hash, 1), {})
  await ds.deleteEntry(e.id)
  await ds.close()
  assert.equal(existsSync(`${path}-wal`), false, 'the WAL was checkpointed and removed')
  assert.equal(file().includes(hash), false, 'the spent token hash is gone from the file')
  assert.equal(file().includes(gone), false, 'the deleted entry is gone from the file')
  assert.ok(file().includes(kept), 'live rows are still there')
})
