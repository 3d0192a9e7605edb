import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { adminCall } from '../../src/server/admin-client.js'
import { loadBetterSqlite3 } from '../../src/server/datastore/sqlite.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'
import { cliPath, repoRoot, run } from '../helpers/exec.js'

const TOTAL = 400
const KILL_AFTER = 200
const IN_FLIGHT = 8
const td = TrustDomain.parse('example.org')

interface ServerProcess {
  readonly child: ChildProcess
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  readonly socket: string
  /** host:port of the node API. */
  readonly address: string
  stderr(): string
}

type After = { after: (fn: () => Promise<void> | void) => void }

/** `server run` from the CLI on `dir`; killed in t.after whatever happens to the test. */
async function runServer(t: After, dir: string): Promise<ServerProcess> {
  const child = spawn(
    process.execPath,
    [
      cliPath,
      'server',
      'run',
      '--config',
      join(repoRoot, 'examples/local/server.conf'),
      '--data-dir',
      dir,
      '--admin-socket',
      join(dir, 'admin.sock'),
      '--port',
      '0',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => r({ code, signal })),
  )
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    void exited.then(() => reject(new Error(`server exited before listening: ${stderr}`)))
  })
  const info = JSON.parse(line) as { admin_socket: string; listening: string }
  return { child, exited, socket: info.admin_socket, address: info.listening, stderr: () => stderr }
}

function integrityCheck(path: string): unknown {
  const Db = loadBetterSqlite3()
  const db = new Db(path, { readonly: true, fileMustExist: true })
  try {
    return db.pragma('integrity_check', { simple: true })
  } finally {
    db.close()
  }
}

test('entries acknowledged by the admin API survive kill -9 of `server run`', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-srvcrash-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const first = await runServer(t, dir)

  const acked: string[] = []
  const beforeKill: unknown[] = []
  let next = 0
  let killed = false
  const worker = async () => {
    while (next < TOTAL) {
      const i = next++
      try {
        const r = await adminCall(first.socket, 'POST', '/v1/entries', {
          spiffe_id: `spiffe://example.org/crash/w${i}`,
          parent_id: 'spiffe://example.org/crash/agent',
          selectors: [{ type: 'unix', value: `uid:${i}` }],
        })
        acked.push(String(r.id))
        if (!killed && acked.length >= KILL_AFTER) {
          killed = true
          first.child.kill('SIGKILL')
        }
      } catch (err) {
        // Calls in flight when the server dies fail; none may fail before that.
        if (!killed) beforeKill.push(err)
        return
      }
    }
  }
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
  assert.deepEqual(beforeKill, [])
  assert.ok(killed, `only ${acked.length} acks for ${next} creates`)
  const end = await first.exited
  assert.equal(end.signal, 'SIGKILL', first.stderr())
  assert.ok(acked.length >= KILL_AFTER)
  assert.ok(next < TOTAL, 'the kill landed mid-burst')

  // The file the dead server left (hot WAL and all) is consistent as it is.
  const db = join(dir, 'datastore.sqlite3')
  assert.equal(integrityCheck(db), 'ok')

  const second = await runServer(t, dir)
  const listed = (await adminCall(second.socket, 'GET', '/v1/entries')).entries as {
    id: string
    spiffeId: string
  }[]
  const ids = new Set(listed.map((e) => e.id))
  const lost = acked.filter((id) => !ids.has(id))
  assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged entries lost`)
  // Nothing appears that was never asked for, and no create was applied twice.
  assert.ok(listed.length <= next, `${listed.length} entries for ${next} creates`)
  assert.equal(new Set(listed.map((e) => e.spiffeId)).size, listed.length)
  // The restarted server still takes writes.
  const more = await adminCall(second.socket, 'POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/crash/after',
    parent_id: 'spiffe://example.org/crash/agent',
    selectors: [{ type: 'unix', value: 'uid:after' }],
  })
  assert.equal(typeof more.id, 'string')

  second.child.kill('SIGTERM')
  assert.deepEqual(await second.exited, { code: 0, signal: null })
  assert.equal(integrityCheck(db), 'ok')
})

test('a restarted server signs with its own CA key after another used the config', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'spiffe-edge-srvkeys-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const dirA = join(root, 'a')
  const dirB = join(root, 'b')
  const a = await runServer(t, dirA)
  const bundleA = String((await adminCall(a.socket, 'GET', '/v1/bundle')).bundle)
  a.child.kill('SIGTERM')
  assert.equal((await a.exited).code, 0, a.stderr())
  // Another trust domain instance started by an operator from the same example config.
  const b = await runServer(t, dirB)
  b.child.kill('SIGTERM')
  assert.equal((await b.exited).code, 0, b.stderr())

  const again = await runServer(t, dirA)
  assert.equal(String((await adminCall(again.socket, 'GET', '/v1/bundle')).bundle), bundleA)
  const token = String((await adminCall(again.socket, 'POST', '/v1/tokens', {})).token)
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: again.address, trustDomain: td, bundle: 'insecure' })
  t.after(() => client.close())
  const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
  writeFileSync(join(root, 'bundle.pem'), bundleA)
  writeFileSync(
    join(root, 'svid.pem'),
    r.svid.certChain.map((d) => new x509.X509Certificate(d).toString('pem')).join('\n'),
  )
  const v = await run('openssl', [
    'verify',
    '-CAfile',
    join(root, 'bundle.pem'),
    join(root, 'svid.pem'),
  ])
  assert.equal(v.code, 0, v.stdout + v.stderr)
  again.child.kill('SIGTERM')
  assert.equal((await again.exited).code, 0)
})
