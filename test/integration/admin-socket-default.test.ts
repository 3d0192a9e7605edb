/**
 * The admin socket's absolute default, as spire-server's /tmp/spire-server/private/api.sock:
 * `server run` and every `server` verb meet there without flags, `private` is created 0700 and
 * must be ours, and a second server that would share the default refuses with a coded error
 * instead of taking the socket over. Real `server run` processes; only this file uses the default.
 */
import assert from 'node:assert/strict'
import { chownSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { DEFAULT_ADMIN_SOCKET } from '../../src/common/socket-dir.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'

/** The environment an operator's shell has: no SPIFFE_EDGE_ADMIN_SOCKET. */
const env = { ...process.env }
delete env.SPIFFE_EDGE_ADMIN_SOCKET

function serverConfig(dir: string, extra = ''): string {
  const file = join(dir, 'server.conf')
  writeFileSync(
    file,
    `[server]\ntrust_domain = "example.org"\ndata_dir = "./data"\nbind_port = 0\n${extra}` +
      '[plugins.KeyManager.disk]\n[plugins.NodeAttestor.join_token]\n',
  )
  return file
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-admindef-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('server run and the server verbs agree on the absolute default admin socket; a second server refuses it', async (t) => {
  assert.equal(DEFAULT_ADMIN_SOCKET, '/tmp/spiffe-edge-server/private/api.sock')
  const help = await cli(['server', 'healthcheck', '--help'], env)
  assert.match(help.stdout, /default: \/tmp\/spiffe-edge-server\/private\/api\.sock/)
  const runHelp = await cli(['server', 'run', '--help'], env)
  assert.match(runHelp.stdout, /default: \/tmp\/spiffe-edge-server\/private\/api\.sock/)

  const a = tempDir(t)
  const first = await startCli(['server', 'run', '-config', serverConfig(a)], t, { env })
  assert.equal(first.first.admin_socket, DEFAULT_ADMIN_SOCKET)
  const priv = statSync('/tmp/spiffe-edge-server/private')
  assert.equal(priv.mode & 0o777, 0o700, 'private is 0700')
  assert.equal(priv.uid, process.geteuid!())
  assert.equal(statSync(DEFAULT_ADMIN_SOCKET).mode & 0o777, 0o600)

  // No flag, no env: the verbs find the server, from any working directory.
  const health = await cli(['server', 'healthcheck'], env)
  assert.equal(health.code, 0, health.stderr)
  const token = await cli(['server', 'token', 'generate', '-output', 'json'], env)
  assert.equal(token.code, 0, token.stderr)
  assert.match(JSON.parse(token.stdout).value, /^[0-9a-f-]{8,}/)
  const count = await cli(['server', 'entry', 'count'], env)
  assert.equal(count.code, 0, count.stderr)

  // -socketPath still overrides the default.
  const elsewhere = await cli(['server', 'healthcheck', '-socketPath', join(a, 'none.sock')], env)
  assert.equal(elsewhere.code, 1)
  assert.match(elsewhere.stderr, /error\[ERR_SERVER_UNREACHABLE\][^\n]*none\.sock/)

  // A second server on its own data dir but the same (default) socket: refused, coded, and the
  // first keeps serving.
  const b = tempDir(t)
  const second = await cli(['server', 'run', '-config', serverConfig(b)], env)
  assert.equal(second.code, 1, second.stdout)
  assert.match(second.stderr, /error\[ERR_ADMIN_SOCKET_IN_USE\]/)
  assert.match(second.stderr, /remedy: .*admin_socket/)
  assert.equal((await cli(['server', 'healthcheck'], env)).code, 0)

  // Stopped cleanly, the default is free again for the next server.
  first.child.kill('SIGTERM')
  assert.equal(await first.exited, 0, first.stderr())
  const third = await startCli(['server', 'run', '-config', serverConfig(b)], t, { env })
  assert.equal(third.first.admin_socket, DEFAULT_ADMIN_SOCKET)
  third.child.kill('SIGTERM')
  assert.equal(await third.exited, 0, third.stderr())
})

test('a private socket directory is created 0700, and one owned by another user is refused', async (t) => {
  const dir = tempDir(t)
  const fresh = await startCli(
    ['server', 'run', '-config', serverConfig(dir, 'admin_socket = "./run/private/api.sock"\n')],
    t,
    { env },
  )
  assert.equal(statSync(join(dir, 'run/private')).mode & 0o777, 0o700)
  fresh.child.kill('SIGTERM')
  assert.equal(await fresh.exited, 0, fresh.stderr())

  const other = tempDir(t)
  mkdirSync(join(other, 'theirs/private'), { recursive: true, mode: 0o700 })
  chownSync(join(other, 'theirs/private'), 65534, 65534)
  const r = await cli(
    [
      'server',
      'run',
      '-config',
      serverConfig(other, 'admin_socket = "./theirs/private/api.sock"\n'),
    ],
    env,
  )
  assert.equal(r.code, 1)
  assert.match(r.stderr, /error\[ERR_ADMIN_SOCKET\][^\n]*owned by uid 65534/)
})
