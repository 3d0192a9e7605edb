import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startCli } from '../helpers/cli-process.js'
import { cli, repoRoot } from '../helpers/exec.js'

/** `server run` as an operator starts it: the CLI in a child process, with flags over the example config. */
async function runServer(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-srvcli-'))
  const p = await startCli(
    [
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
    t,
  )
  // Registered after startCli's: the process is gone before its dir is removed.
  t.after(async () => rmSync(dir, { recursive: true, force: true }))
  return { ...p, dir, socket: String(p.first.admin_socket) }
}

test('the admin CLI manages entries, tokens, agents and the bundle; SIGTERM stops the server cleanly', async (t) => {
  const s = await runServer(t)
  const a = (...args: string[]) => cli([...args, '--admin-socket', s.socket])
  assert.equal(statSync(s.socket).mode & 0o777, 0o600, 'admin socket is private')
  // Everything the server writes goes under --data-dir: keys included, never beside the config.
  assert.equal(statSync(join(s.dir, 'keys')).mode & 0o777, 0o700)
  assert.equal(existsSync(join(repoRoot, 'examples/local/data')), false)
  assert.match((await a('server', 'healthcheck')).stdout, /Server is healthy/)

  const created = await a(
    'server',
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/gw',
    '--spiffeID',
    'spiffe://example.org/app',
    '--selector',
    'unix:uid:1000',
    '--selector',
    'unix:gid:1000',
    '--dns',
    'app.local',
    '--x509SVIDTTL',
    '600',
    '--json',
  )
  assert.equal(created.code, 0, created.stderr)
  // -output json (here as --json): SPIRE's BatchCreateEntryResponse.
  const entry = (
    JSON.parse(created.stdout) as {
      results: {
        status: { code: number }
        entry: { id: string; selectors: unknown[]; x509_svid_ttl: number }
      }[]
    }
  ).results[0]!.entry
  assert.equal(entry.selectors.length, 2)
  assert.equal(entry.x509_svid_ttl, 600)
  const shown = await a('server', 'entry', 'show', '--entryID', entry.id)
  assert.match(shown.stdout, /SPIFFE ID\s+: spiffe:\/\/example.org\/app/)
  assert.match(shown.stdout, /Selector\s+: unix:uid:1000/)
  const node = await a(
    'server',
    'entry',
    'create',
    '--node',
    '--spiffeID',
    'spiffe://example.org/fleet/eu',
    '--selector',
    'tpm:manufacturer:IBM',
    '--json',
  )
  assert.deepEqual(JSON.parse(node.stdout).results[0].entry.parent_id, {
    trust_domain: 'example.org',
    path: '/spire/server',
  })
  const updated = await a(
    'server',
    'entry',
    'update',
    '--entryID',
    entry.id,
    '--parentID',
    'spiffe://example.org/gw',
    '--spiffeID',
    'spiffe://example.org/app',
    '--selector',
    'unix:uid:1001',
    '--json',
  )
  assert.deepEqual(JSON.parse(updated.stdout).results[0].entry.selectors, [
    { type: 'unix', value: 'uid:1001' },
  ])
  const listed = JSON.parse((await a('server', 'entry', 'list', '--json')).stdout) as {
    entries: unknown[]
  }
  assert.equal(listed.entries.length, 2)
  assert.equal((await a('server', 'entry', 'delete', '--entryID', entry.id)).code, 0)
  const gone = await a('server', 'entry', 'show', '--entryID', entry.id, '--json')
  assert.equal(gone.code, 1)
  assert.equal(JSON.parse(gone.stderr).error.code, 'ERR_DATASTORE_NOT_FOUND')

  const token = await a('server', 'token', 'generate', '--ttl', '60', '--json')
  assert.match(JSON.parse(token.stdout).value, /^[0-9a-f]{64}$/)
  assert.equal(JSON.parse((await a('server', 'agent', 'list', '--json')).stdout).agents.length, 0)

  const pem = await a('server', 'bundle', 'show')
  assert.match(pem.stdout, /BEGIN CERTIFICATE/)
  const jwks = JSON.parse((await a('server', 'bundle', 'show', '--format', 'spiffe')).stdout) as {
    keys: { use: string }[]
    spiffe_sequence: number
  }
  assert.ok(
    jwks.keys.some((k) => k.use === 'x509-svid') && jwks.keys.some((k) => k.use === 'jwt-svid'),
  )
  assert.ok(jwks.spiffe_sequence >= 1)

  // Bad input: coded errors, nothing written, the server keeps serving.
  for (const [args, code] of [
    [
      [
        '--parentID',
        'spiffe://example.org/gw',
        '--spiffeID',
        'spiffe://Example.org/x',
        '--selector',
        'unix:uid:1',
      ],
      'ERR_SPIFFE_ID_INVALID',
    ],
    [
      [
        '--parentID',
        'spiffe://example.org/gw',
        '--spiffeID',
        'spiffe://other.org/x',
        '--selector',
        'unix:uid:1',
      ],
      'ERR_DATASTORE_INVALID',
    ],
    [
      [
        '--parentID',
        'spiffe://example.org/gw',
        '--spiffeID',
        'spiffe://example.org/x',
        '--selector',
        'nocolon',
      ],
      'ERR_USAGE',
    ],
    [['--spiffeID', 'spiffe://example.org/x', '--selector', 'unix:uid:1'], 'ERR_USAGE'],
  ] as const) {
    const r = await a('server', 'entry', 'create', ...args, '--json')
    assert.equal(r.code === 0, false, args.join(' '))
    assert.equal(JSON.parse(r.stderr).error.code, code, args.join(' '))
  }
  assert.equal(JSON.parse((await a('server', 'entry', 'list', '--json')).stdout).entries.length, 1)

  s.child.kill('SIGTERM')
  assert.equal(await s.exited, 0)
  assert.match(s.stderr(), /"msg":"server stopped"/)
})

test('a broken config reports every problem at once and unknown keys are refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-badconf-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'server.conf')
  writeFileSync(
    file,
    '[server]\ntrust_domain = "Bad Domain"\nbind_port = 99999\nca_tll = "24h"\nlog_level = "loud"\n',
  )
  const r = await cli(['server', 'run', '--config', file, '--json'])
  assert.equal(r.code, 1)
  const err = JSON.parse(r.stderr).error as { code: string; message: string }
  assert.equal(err.code, 'ERR_CONFIG')
  for (const key of ['trust_domain', 'bind_port', 'ca_tll', 'log_level'])
    assert.ok(err.message.includes(key), key)
  const noFile = await cli(['server', 'run', '--config', join(dir, 'missing.conf'), '--json'])
  assert.equal(JSON.parse(noFile.stderr).error.code, 'ERR_CONFIG')
  const unreachable = await cli([
    'server',
    'healthcheck',
    '--admin-socket',
    join(dir, 'none.sock'),
    '--json',
  ])
  assert.equal(JSON.parse(unreachable.stderr).error.code, 'ERR_SERVER_UNREACHABLE')
})
