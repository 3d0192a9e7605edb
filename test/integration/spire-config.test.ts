import assert from 'node:assert/strict'
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { fetchValidSvids, processDir } from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, repoRoot, run } from '../helpers/exec.js'

/**
 * A SPIRE user's own quickstart files (HCL, an upstream "dummy" CA on disk, a join token) run
 * unchanged: `server run -config server.conf -expandEnv`, `agent run -config agent.conf
 * -joinToken T -expandEnv`, and a workload gets its SVID.
 */
test("SPIRE's quickstart server.conf and agent.conf run as they are", async (t) => {
  const root = processDir('spiffe-edge-spirecfg-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  for (const d of ['conf/server', 'conf/agent']) mkdirSync(join(root, d), { recursive: true })
  copyFileSync(
    join(repoRoot, 'test/fixtures/spire/server.conf'),
    join(root, 'conf/server/server.conf'),
  )
  copyFileSync(
    join(repoRoot, 'test/fixtures/spire/agent.conf'),
    join(root, 'conf/agent/agent.conf'),
  )
  // SPIRE's quickstart ships a dummy upstream CA; the agent trusts the same certificate.
  const key = join(root, 'conf/server/conf/server/dummy_upstream_ca.key')
  const crt = join(root, 'conf/server/conf/server/dummy_upstream_ca.crt')
  mkdirSync(join(root, 'conf/server/conf/server'), { recursive: true })
  const gen = await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    key,
    '-out',
    crt,
    '-days',
    '2',
    '-subj',
    '/C=US/O=SPIFFE',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ])
  assert.equal(gen.code, 0, gen.stderr)
  mkdirSync(join(root, 'conf/agent/conf/agent'), { recursive: true })
  copyFileSync(crt, join(root, 'conf/agent/conf/agent/dummy_root_ca.crt'))

  const env = { ...process.env, STATE: root, SERVER_PORT: '0', HEALTH_PORT: '0' }
  const serverConf = join(root, 'conf/server/server.conf')
  const v = await cli(['server', 'validate', '-config', serverConf, '-expandEnv'], env)
  assert.equal(v.code, 0, v.stderr)
  assert.match(v.stdout, /ca_subject: ignored[\s\S]*Configuration is valid/)

  const server = await startCli(['server', 'run', '-config', serverConf, '-expandEnv'], t, { env })
  const sock = String(server.first.admin_socket)
  assert.equal(sock, join(root, 'server/private/api.sock'))
  const port = String(server.first.listening).split(':')[1]!
  const admin = async (...args: string[]) => {
    const r = await cli(['server', ...args, '-socketPath', sock])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  }
  const token = /Token: (\S+)/.exec(
    await admin('token', 'generate', '-spiffeID', 'spiffe://example.org/myagent'),
  )![1]!
  await admin(
    'entry',
    'create',
    '-parentID',
    'spiffe://example.org/myagent',
    '-spiffeID',
    'spiffe://example.org/myservice',
    '-selector',
    `unix:uid:${process.getuid!()}`,
  )
  const agentEnv = { ...env, SERVER_PORT: port }
  const agent = await startCli(
    [
      'agent',
      'run',
      '-config',
      join(root, 'conf/agent/agent.conf'),
      '-joinToken',
      token,
      '-expandEnv',
    ],
    t,
    { env: agentEnv },
  )
  const apiSock = String(agent.first.socket_path)
  assert.equal(apiSock, join(root, 'agent/public/api.sock'))
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      assert.deepEqual(await fetchValidSvids(apiSock), ['spiffe://example.org/myservice'])
      break
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, 300))
    }
  }
  // The SVID chains to the dummy upstream root the agent was given, as with SPIRE.
  assert.match(
    readFileSync(join(root, 'conf/agent/conf/agent/dummy_root_ca.crt'), 'utf8'),
    /BEGIN CERTIFICATE/,
  )
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0)
})

test('config convert writes what maps and lists the rest; it never overwrites a file', async (t) => {
  const root = processDir('spiffe-edge-convert-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const out = join(root, 'server.toml')
  const env = { ...process.env, STATE: '/run/spire', SERVER_PORT: '8081', HEALTH_PORT: '8080' }
  const args = [
    'config',
    'convert',
    '-config',
    join(repoRoot, 'test/fixtures/spire/server.conf'),
    '-expandEnv',
  ]
  const r = await cli([...args, '-out', out], env)
  assert.equal(r.code, 0, r.stderr)
  const toml = readFileSync(out, 'utf8')
  assert.match(toml, /\[server\]/)
  assert.match(toml, /admin_socket = "\/run\/spire\/server\/private\/api.sock"/)
  assert.match(toml, /# note: server.ca_subject/)
  const again = await cli([...args, '-out', out], env)
  assert.equal(again.code, 2)
  assert.match(again.stderr, /never overwritten/)
  assert.equal(readFileSync(out, 'utf8'), toml)
})
