import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { openSqliteDatastore } from '../../src/server/datastore/sqlite.js'
import { MAX_ROUNDS } from '../../src/server/datastore/sqlite-rounds.js'

const state = (s: string) => new Uint8Array(Buffer.from(s))

test('an attestation round put by one connection is taken once, by either, at its round only, until it expires', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-rounds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'datastore.sqlite3')
  await using a = await openSqliteDatastore(file)
  await using b = await openSqliteDatastore(file)
  const now = 1_000_000
  await a.putAttestRound('bs-1/n1', 2, state('one'), now + 1000, now)
  // A key is put once: a second round state never replaces the first.
  await assert.rejects(a.putAttestRound('bs-1/n1', 2, state('two'), now + 1000, now))
  assert.equal(await b.takeAttestRound('bs-1/n1', 3, now), undefined, 'another round')
  assert.equal(await b.takeAttestRound('bs-1/n2', 2, now), undefined, 'another attempt')
  assert.equal(Buffer.from((await b.takeAttestRound('bs-1/n1', 2, now))!).toString(), 'one')
  assert.equal(await a.takeAttestRound('bs-1/n1', 2, now), undefined, 'taken once')
  // Expired: not taken, and pruned.
  await a.putAttestRound('bs-2/n1', 2, state('x'), now + 1000, now)
  assert.equal(await b.takeAttestRound('bs-2/n1', 2, now + 1000), undefined)
  assert.equal(await b.pruneAttestRounds(now + 1000), 1)
})

test('the round table is bounded: full of unexpired rounds, a put is refused (ERR_DATASTORE_BUSY)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-rounds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using ds = await openSqliteDatastore(join(dir, 'datastore.sqlite3'))
  const now = 1_000_000
  for (let i = 0; i < MAX_ROUNDS; i++)
    await ds.putAttestRound(`k${i}`, 2, state('s'), now + 60_000, now)
  await assert.rejects(ds.putAttestRound('one-more', 2, state('s'), now + 60_000, now), {
    code: 'ERR_DATASTORE_BUSY',
  })
  // Expired ones make room again (pruned a few at a time on the write path).
  await ds.pruneAttestRounds(now + 60_000)
  await ds.putAttestRound('one-more', 2, state('s'), now + 120_000, now + 60_000)
})

/** A child process on the same file: opens it (migrating if new) and takes every key it can. */
const child = `
const { openSqliteDatastore } = await import(process.argv[1])
const ds = await openSqliteDatastore(process.argv[2])
const got = []
for (let i = 0; i < 200; i++) if (await ds.takeAttestRound('k' + i, 2, 1)) got.push(i)
await ds.close()
process.stdout.write(JSON.stringify(got))
`

test('two processes start on one new datastore file at once (the schema is made once) and race for the same rounds: each is taken by one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-rounds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'datastore.sqlite3')
  const mod = fileURLToPath(new URL('../../src/server/datastore/sqlite.js', import.meta.url))
  const race = () =>
    Promise.all(
      [0, 1].map(
        () =>
          new Promise<number[]>((resolve, reject) => {
            const p = spawn(process.execPath, ['--input-type=module', '-e', child, mod, file])
            let out = ''
            let err = ''
            p.stdout.on('data', (d: Buffer) => {
              out += d
            })
            p.stderr.on('data', (d: Buffer) => {
              err += d
            })
            p.on('exit', (c) =>
              c === 0 ? resolve(JSON.parse(out) as number[]) : reject(new Error(err)),
            )
          }),
      ),
    )
  // Both start on a file that does not exist yet: both open it, one runs the migrations.
  const [x, y] = await race()
  assert.deepEqual([...x!, ...y!], [])
  {
    await using ds = await openSqliteDatastore(file)
    for (let i = 0; i < 200; i++) await ds.putAttestRound(`k${i}`, 2, state('s'), 60_000, 0)
  }
  const [p, q] = await race()
  assert.deepEqual(
    [...p!, ...q!].sort((m, n) => m - n),
    Array.from({ length: 200 }, (_, i) => i),
    'every round taken exactly once',
  )
  const Db = (await import('../../src/common/sqlite.js')).loadBetterSqlite3()
  const db = new Db(file, { readonly: true })
  const versions = db.prepare('SELECT version FROM schema_version ORDER BY version').all()
  db.close()
  const { LATEST_SCHEMA_VERSION } = await import('../../src/server/datastore/migrations.js')
  assert.deepEqual(
    versions.map((v) => (v as { version: number }).version),
    Array.from({ length: LATEST_SCHEMA_VERSION }, (_, i) => i + 1),
  )
})
