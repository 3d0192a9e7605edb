import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { loadBetterSqlite3, openSqliteDatastore } from '../../src/server/datastore/index.js'

const writer = fileURLToPath(new URL('../helpers/datastore-writer.js', import.meta.url))
const ACKS_PER_ROUND = 300
const ROUNDS = 3

interface RoundResult {
  readonly acked: string[]
  readonly signal: NodeJS.Signals | null
}

/** Runs the writer until it has acknowledged `acks` entries, then SIGKILLs it mid-burst. */
function writeUntilKilled(path: string, acks: number): Promise<RoundResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writer, path], { stdio: ['ignore', 'pipe', 'pipe'] })
    const acked: string[] = []
    let partial = ''
    let stderr = ''
    let killed = false
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`writer too slow: ${acked.length} acks in 60 s; stderr: ${stderr}`))
    }, 60_000)
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    child.stdout.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n')
      // A trailing fragment is not an acknowledgement until its newline arrives.
      partial = lines.pop() ?? ''
      acked.push(...lines.filter((l) => l.length > 0))
      if (!killed && acked.length >= acks) {
        killed = true
        child.kill('SIGKILL')
      }
    })
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (!killed) reject(new Error(`writer exited on its own (code ${code}): ${stderr}`))
      else resolve({ acked, signal })
    })
  })
}

function mode(path: string): number {
  return statSync(path).mode & 0o777
}

test('entries acknowledged before kill -9 survive, the file is intact and private', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'spiffe-edge-crash-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const dir = join(root, 'state')
  const path = join(dir, 'datastore.sqlite')

  const acked: string[] = []
  for (let round = 0; round < ROUNDS; round++) {
    // Later rounds open a database whose last writer died with a hot WAL: recovery is exercised.
    const r = await writeUntilKilled(path, ACKS_PER_ROUND)
    assert.equal(r.signal, 'SIGKILL')
    assert.ok(r.acked.length >= ACKS_PER_ROUND)
    acked.push(...r.acked)
  }

  // Killed processes leave -wal and -shm behind: they hold the same secrets as the database.
  assert.equal(mode(dir), 0o700, 'directory created 0700')
  for (const f of [path, `${path}-wal`, `${path}-shm`]) {
    assert.ok(existsSync(f), `${f} exists after kill -9`)
    assert.equal(mode(f), 0o600, `${f} is 0600`)
  }

  const ds = await openSqliteDatastore(path)
  try {
    const present = new Set((await ds.listEntries()).map((e) => e.id))
    const missing = acked.filter((id) => !present.has(id))
    assert.deepEqual(missing, [], `${missing.length} of ${acked.length} acknowledged ids lost`)
    assert.ok((await ds.currentRevision()) >= acked.length)
    assert.equal(new Set(acked).size, acked.length, 'ids are unique')
  } finally {
    await ds.close()
  }

  const Database = loadBetterSqlite3()
  const db = new Database(path, { readonly: true })
  try {
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok')
    assert.deepEqual(db.pragma('foreign_key_check'), [])
    // Child rows of every surviving entry came with it (one transaction per write).
    const orphans = db
      .prepare(
        `SELECT count(*) AS n FROM entries e
         WHERE (SELECT count(*) FROM entry_selectors s WHERE s.entry_id = e.id) != 2
            OR (SELECT count(*) FROM entry_dns_names d WHERE d.entry_id = e.id) != 1`,
      )
      .get() as { n: number }
    assert.equal(orphans.n, 0)
  } finally {
    db.close()
  }
  assert.equal(mode(path), 0o600, 'still 0600 after reopen')
})

test('the database file is created 0600 even under a permissive umask', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'spiffe-edge-mode-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const path = join(root, 'a', 'b', 'ds.sqlite')
  const old = process.umask(0)
  try {
    const ds = await openSqliteDatastore(path)
    await ds.createEntry({
      spiffeId: 'spiffe://example.org/w',
      parentId: 'spiffe://example.org/agent',
      selectors: [{ type: 'unix', value: 'uid:0' }],
      x509SvidTtl: 0,
      jwtSvidTtl: 0,
      dnsNames: [],
      hint: '',
      federatesWith: [],
      admin: false,
      downstream: false,
      expiresAt: null,
    })
    for (const f of [path, `${path}-wal`, `${path}-shm`]) assert.equal(mode(f), 0o600, f)
    assert.equal(mode(join(root, 'a')), 0o700)
    assert.equal(mode(join(root, 'a', 'b')), 0o700)
    await ds.close()
  } finally {
    process.umask(old)
  }
})
