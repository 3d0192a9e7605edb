import assert from 'node:assert/strict'
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { processDir } from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    assert.ok(Date.now() < deadline, what)
    await new Promise((r) => setTimeout(r, 100))
  }
}

test('server logs as an operator runs them: text to log_file, SIGHUP after logrotate, logger get|set|reset', async (t) => {
  const dir = processDir('spiffe-edge-logs-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const config = join(dir, 'server.conf')
  writeFileSync(
    config,
    '[server]\ntrust_domain = "example.org"\ndata_dir = "./data"\nadmin_socket = "./data/admin.sock"\n' +
      'log_level = "WARN"\nlog_format = "text"\nlog_file = "server.log"\n' +
      '[plugins.KeyManager.disk]\n[plugins.NodeAttestor.join_token]\n',
  )
  const p = await startCli(['server', 'run', '-config', config, '-serverPort', '0'], t)
  const sock = String(p.first.admin_socket)
  const admin = async (...args: string[]) => {
    const r = await cli(['server', ...args, '-socketPath', sock])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  }
  const log = join(dir, 'server.log')
  assert.match(await admin('logger', 'get'), /Logger Level : warn\nLaunch Level : warn/)
  // At WARN, a generated token is not logged; at debug (set in SPIRE's case), it is.
  await admin('token', 'generate')
  assert.doesNotMatch(readFileSync(log, 'utf8'), /join token generated/)
  assert.match(await admin('logger', 'set', '-level', 'DEBUG'), /Logger Level : debug/)
  await admin('token', 'generate')
  await until('the token line reaches the file', () =>
    /level=info component=server msg="join token generated"/.test(readFileSync(log, 'utf8')),
  )
  assert.equal(
    p.stderr().includes('join token generated'),
    false,
    'logs go to the file, not stderr',
  )

  // logrotate moves the file and sends SIGHUP: the server writes to a new file and keeps running.
  renameSync(log, `${log}.1`)
  p.child.kill('SIGHUP')
  await new Promise((r) => setTimeout(r, 300))
  await admin('token', 'generate')
  await until('a new log file after SIGHUP', () => {
    try {
      return /join token generated/.test(readFileSync(log, 'utf8'))
    } catch {
      return false
    }
  })
  assert.equal(p.child.exitCode, null, 'SIGHUP did not stop the server')

  assert.match(await admin('logger', 'reset'), /Logger Level : warn/)
  const bad = await cli(['server', 'logger', 'set', '-level', 'loud', '-socketPath', sock])
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /ERR_USAGE[\s\S]*debug, info, warn, error/)
  p.child.kill('SIGTERM')
  assert.equal(await p.exited, 0)
})
