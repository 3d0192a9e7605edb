/**
 * The data dir with real `server run` / `agent run` processes: one process per data dir (kill -9
 * frees it), keys never replaced when the datastore goes missing, damage reported, bad settings
 * and permissions met with coded errors.
 */
import assert from 'node:assert/strict'
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminCall } from '../../src/server/admin-client.js'
import { type CliProcess, startCli } from '../helpers/cli-process.js'
import { cli, repoRoot } from '../helpers/exec.js'

type T = { after(fn: () => Promise<void> | void): void }

function tempDir(t: T): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-datadir-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const serverArgs = (dataDir: string, ...extra: string[]) => [
  'server',
  'run',
  '--config',
  join(repoRoot, 'examples/local/server.conf'),
  '--data-dir',
  dataDir,
  '--admin-socket',
  join(dataDir, 'admin.sock'),
  '--port',
  '0',
  ...extra,
]

async function stop(p: CliProcess): Promise<void> {
  p.child.kill('SIGTERM')
  assert.equal(await p.exited, 0, p.stderr())
}

/** The key files and their bytes. */
function keyFiles(dir: string): Map<string, string> {
  return new Map(readdirSync(dir).map((n) => [n, readFileSync(join(dir, n), 'utf8')]))
}

/** A refusal: exit 1 and `error[CODE]` with a remedy on stderr. */
async function refuses(args: string[], code: string): Promise<string> {
  const r = await cli(args)
  assert.equal(r.code, 1, `expected exit 1, got ${r.code}: ${r.stdout}${r.stderr}`)
  assert.match(r.stderr, new RegExp(`error\\[${code}\\]`), r.stderr)
  assert.match(r.stderr, /remedy:/, r.stderr)
  return r.stderr
}

test('a second server on a data dir refuses; after kill -9 of the first a new one starts', async (t) => {
  const dir = join(tempDir(t), 'server')
  const first = await startCli(serverArgs(dir), t)
  const sock = String(first.first.admin_socket)
  const stderr = await refuses(serverArgs(dir), 'ERR_DATA_DIR_LOCKED')
  assert.match(stderr, /in use by another server/)
  // The live server kept its admin socket and datastore.
  assert.equal((await adminCall(sock, 'GET', '/v1/health')).healthy, true)
  first.child.kill('SIGKILL')
  await first.exited
  const second = await startCli(serverArgs(dir), t)
  assert.equal((await adminCall(sock, 'GET', '/v1/health')).healthy, true)
  await stop(second)
})

test('a missing or emptied datastore never replaces the CA keys; --reset moves both aside', async (t) => {
  const dir = join(tempDir(t), 'server')
  const keys = join(dir, 'keys')
  const ds = join(dir, 'datastore.sqlite3')
  await stop(await startCli(serverArgs(dir), t))
  const before = keyFiles(keys)
  assert.ok(
    [...before.keys()].some((n) => n.startsWith('x509-ca-')),
    [...before.keys()].join(),
  )

  truncateSync(ds, 0) // `: > datastore.sqlite3`
  let stderr = await refuses(serverArgs(dir), 'ERR_DATASTORE_MISSING')
  assert.match(stderr, /--reset/)
  assert.deepEqual(keyFiles(keys), before, 'the keys are untouched')

  for (const f of readdirSync(dir)) if (f.startsWith('datastore.sqlite3')) rmSync(join(dir, f))
  stderr = await refuses(serverArgs(dir), 'ERR_DATASTORE_MISSING')
  assert.deepEqual(keyFiles(keys), before, 'the keys are untouched')

  const reset = await startCli(serverArgs(dir, '--reset'), t)
  await stop(reset)
  const aside = readdirSync(dir).filter((n) => n.startsWith('keys.reset-'))
  assert.equal(aside.length, 1, readdirSync(dir).join())
  assert.deepEqual(keyFiles(join(dir, aside[0]!)), before, 'the old keys moved aside, intact')
  const fresh = keyFiles(keys)
  for (const [name, pem] of fresh) assert.notEqual(before.get(name), pem, `${name} is new`)
  assert.ok(readdirSync(dir).some((n) => n.startsWith('datastore.sqlite3.reset-')))

  // The other way round: the datastore names keys that are gone. Refused, nothing regenerated.
  rmSync(keys, { recursive: true })
  stderr = await refuses(serverArgs(dir), 'ERR_KEY_MANAGER')
  assert.match(stderr, /restore the key directory/)
  assert.ok(!existsSync(keys) || readdirSync(keys).length === 0, 'no key was generated')
})

test('a datastore damaged mid-file is refused at start as ERR_DATASTORE_CORRUPT', async (t) => {
  const dir = join(tempDir(t), 'server')
  const p = await startCli(serverArgs(dir), t)
  const sock = String(p.first.admin_socket)
  for (let i = 0; i < 200; i++) {
    await adminCall(sock, 'POST', '/v1/entries', {
      spiffe_id: `spiffe://example.org/w/${i}/${'x'.repeat(200)}`,
      parent_id: 'spiffe://example.org/spire/agent/join_token/a',
      selectors: [{ type: 'unix', value: `uid:${i}` }],
    })
  }
  await stop(p) // checkpoints the WAL: the entries are now in the main file
  const running = await startCli(serverArgs(dir), t)
  assert.equal((await cli(['server', 'healthcheck', '--admin-socket', sock])).code, 0)
  const ds = join(dir, 'datastore.sqlite3')
  const size = statSync(ds).size
  assert.ok(size > 16 * 4096)
  const fd = openSync(ds, 'r+')
  writeSync(fd, Buffer.alloc(4 * 4096, 0x5a), 0, 4 * 4096, Math.floor(size / 8192) * 4096)
  closeSync(fd)
  // Damage under a running server: health fails (after its rate limit) instead of saying healthy.
  await new Promise((r) => setTimeout(r, 5100))
  const health = await cli(['server', 'healthcheck', '--admin-socket', sock])
  assert.equal(health.code, 1, health.stdout)
  assert.match(health.stderr, /error\[ERR_DATASTORE_CORRUPT\]/)
  running.child.kill('SIGKILL')
  await running.exited
  await refuses(serverArgs(dir), 'ERR_DATASTORE_CORRUPT')
})

test('open key modes are fixed with a warning; a bad bind address or a file as data dir are coded', async (t) => {
  const root = tempDir(t)
  const dir = join(root, 'server')
  await stop(await startCli(serverArgs(dir), t))
  const keys = join(dir, 'keys')
  chmodSync(dir, 0o777)
  chmodSync(keys, 0o777)
  for (const f of readdirSync(keys)) chmodSync(join(keys, f), 0o644)
  const p = await startCli(serverArgs(dir), t)
  await stop(p)
  assert.match(p.stderr(), /key file permissions were too open; fixed/)
  assert.match(p.stderr(), /data dir was writable by group or others; fixed/)
  assert.equal(statSync(keys).mode & 0o777, 0o700)
  for (const f of readdirSync(keys)) assert.equal(statSync(join(keys, f)).mode & 0o777, 0o600, f)
  assert.equal(statSync(dir).mode & 0o022, 0)

  await refuses(serverArgs(dir, '--bind-address', 'not-an-address'), 'ERR_CONFIG')
  // TEST-NET-1: a valid IP that is not this host's.
  await refuses(serverArgs(dir, '--bind-address', '192.0.2.1'), 'ERR_SERVER_BIND')
  const file = join(root, 'a-file')
  writeFileSync(file, 'x')
  await refuses(serverArgs(file), 'ERR_DATA_DIR')
  // A data dir another user owns: they could swap the datastore or keys under us.
  const foreign = join(root, 'foreign')
  mkdirSync(foreign, { mode: 0o700 })
  chownSync(foreign, 65534, 65534)
  assert.match(await refuses(serverArgs(foreign), 'ERR_DATA_DIR'), /owned by uid 65534/)
})

test('a second agent on a data dir refuses; after kill -9 of the first a new one starts', async (t) => {
  const dir = tempDir(t)
  const server = await startCli(serverArgs(join(dir, 'server')), t)
  const sock = String(server.first.admin_socket)
  const token = String((await adminCall(sock, 'POST', '/v1/tokens', {})).token)
  const agentArgs = [
    'agent',
    'run',
    '--config',
    join(repoRoot, 'examples/local/agent.conf'),
    '--data-dir',
    join(dir, 'agent'),
    '--socket-path',
    join(dir, 'agent-sock', 'api.sock'),
    '--server-address',
    String(server.first.listening),
  ]
  const first = await startCli([...agentArgs, '--join-token', token, '--insecure-bootstrap'], t)
  const stderr = await refuses(
    [...agentArgs.slice(0, -4), '--socket-path', join(dir, 'other.sock'), ...agentArgs.slice(-2)],
    'ERR_DATA_DIR_LOCKED',
  )
  assert.match(stderr, /in use by another agent/)
  assert.ok(existsSync(join(dir, 'agent-sock', 'api.sock')), 'the live socket is untouched')
  first.child.kill('SIGKILL')
  await first.exited
  // Restarts from its stored SVID (the token is spent).
  const second = await startCli(agentArgs, t)
  second.child.kill('SIGTERM')
  await second.exited
})
