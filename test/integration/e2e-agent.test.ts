import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startCli } from '../helpers/cli-process.js'
import { cli, cliPath, repoRoot, run } from '../helpers/exec.js'

test('server + agent + Workload API end to end: X.509 and JWT SVIDs for this uid only, restart keeps identity', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-e2e-'))
  chmodSync(dir, 0o755) // the unprivileged client below must reach the agent socket
  t.after(async () => rmSync(dir, { recursive: true, force: true }))
  const server = await startCli(
    [
      'server',
      'run',
      '--config',
      join(repoRoot, 'examples/local/server.conf'),
      '--data-dir',
      join(dir, 'server'),
      '--admin-socket',
      join(dir, 'server', 'admin.sock'),
      '--port',
      '0',
    ],
    t,
  )
  const sock = String(server.first.admin_socket)
  const address = String(server.first.listening)
  const token = JSON.parse(
    (
      await cli([
        'server',
        'token',
        'generate',
        '--admin-socket',
        sock,
        '--spiffeID',
        'spiffe://example.org/host',
        '--json',
      ])
    ).stdout,
  ).value as string
  const uid = process.getuid!()
  const created = await cli([
    'server',
    'entry',
    'create',
    '--admin-socket',
    sock,
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    'spiffe://example.org/me',
    '--selector',
    `unix:uid:${uid}`,
  ])
  assert.equal(created.code, 0, created.stderr)

  const agentArgs = [
    'agent',
    'run',
    '--config',
    join(repoRoot, 'examples/local/agent.conf'),
    '--data-dir',
    join(dir, 'agent'),
    '--socket-path',
    join(dir, 'agent', 'public', 'api.sock'),
    '--server-address',
    address,
  ]
  const agent = await startCli([...agentArgs, '--join-token', token, '--insecure-bootstrap'], t)
  const apiSock = String(agent.first.socket_path)
  assert.match(String(agent.first.agent_id), /^spiffe:\/\/example\.org\/spire\/agent\/join_token\//)
  // Trust on first use is said at start, with the production alternative.
  assert.match(agent.stderr(), /"level":"warn"[^\n]*insecure_bootstrap[^\n]*trust_bundle_path/)

  const out = join(dir, 'out')
  const fetched = await cli(['api', 'fetch', 'x509', '--socket-path', apiSock, '--write', out])
  assert.equal(fetched.code, 0, fetched.stderr)
  assert.match(fetched.stdout, /SPIFFE ID:\s+spiffe:\/\/example\.org\/me/)
  assert.equal(statSync(join(out, 'svid.0.key')).mode & 0o777, 0o600)
  const v = await run('openssl', [
    'verify',
    '-CAfile',
    join(out, 'bundle.0.pem'),
    join(out, 'svid.0.pem'),
  ])
  assert.equal(v.code, 0, v.stdout + v.stderr)
  assert.match(readFileSync(join(out, 'svid.0.key'), 'utf8'), /BEGIN PRIVATE KEY/)

  const jwt = await cli([
    'api',
    'fetch',
    'jwt',
    '--socket-path',
    apiSock,
    '--audience',
    'db',
    '--output',
    'json',
  ])
  assert.equal(jwt.code, 0, jwt.stderr)
  const tokenText = JSON.stringify(JSON.parse(jwt.stdout)).match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/)?.[0]
  assert.ok(tokenText, jwt.stdout)
  const valid = await cli([
    'api',
    'validate',
    'jwt',
    '--socket-path',
    apiSock,
    '--audience',
    'db',
    '--svid',
    tokenText,
  ])
  assert.equal(valid.code, 0, valid.stderr)
  assert.match(valid.stdout, /SVID is valid/)
  const wrongAud = await cli([
    'api',
    'validate',
    'jwt',
    '--socket-path',
    apiSock,
    '--audience',
    'other',
    '--svid',
    tokenText,
  ])
  assert.notEqual(wrongAud.code, 0)

  // Another uid has no entry: PermissionDenied, nothing printed as an SVID.
  const nobody = await run('setpriv', [
    '--reuid=65534',
    '--regid=65534',
    '--clear-groups',
    process.execPath,
    cliPath,
    'api',
    'fetch',
    'x509',
    '--socket-path',
    apiSock,
  ])
  assert.notEqual(nobody.code, 0)
  assert.doesNotMatch(nobody.stdout, /spiffe:\/\/example\.org\/me/)

  // Restart the agent without a token: it restores its identity and serves again.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  const again = await startCli(agentArgs, t)
  assert.equal(again.first.agent_id, agent.first.agent_id)
  const refetch = await cli(['api', 'fetch', 'x509', '--socket-path', apiSock])
  assert.equal(refetch.code, 0, refetch.stderr)
  assert.equal((await cli(['agent', 'healthcheck', '--socket-path', apiSock])).code, 0)

  again.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await again.exited, 0)
  assert.equal(await server.exited, 0)
})
