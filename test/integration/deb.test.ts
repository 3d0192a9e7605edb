/**
 * The .deb as an operator meets it: built by packaging/deb/build.sh, installed on this machine
 * with dpkg, the server and the agent started from their units' ExecStart lines as the package's
 * user (no systemd runs here, so the test does what the unit's User=, SupplementaryGroups= and
 * RuntimeDirectory= would), a workload served, then removed and purged with nothing left behind.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import { fetchValidSvids } from '../helpers/agent-process.js'
import { repoRoot, run } from '../helpers/exec.js'
import { notifySocket } from '../helpers/notify-socket.js'

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
const skip = !has('dpkg-deb')
  ? 'dpkg-deb is not installed (apt-get install dpkg)'
  : process.getuid?.() !== 0
    ? 'installing a package needs root'
    : false

const UNITS = '/lib/systemd/system'
const ADMIN = '/var/lib/spiffe-edge/server/admin.sock'
/** Everything the package or its scripts create; purge must leave none of it. */
const LEFTOVERS = [
  '/usr/lib/spiffe-edge',
  '/usr/bin/spiffe-edge',
  `${UNITS}/spiffe-edge-server.service`,
  `${UNITS}/spiffe-edge-agent.service`,
  '/etc/spiffe-edge',
  '/etc/logrotate.d/spiffe-edge',
  '/var/lib/spiffe-edge',
  '/var/log/spiffe-edge',
  '/run/spiffe-edge-agent',
]

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args)
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}${r.stdout}`)
  return r.stdout
}

/** The ExecStart= argv of an installed unit (our units use no quoting or specifiers). */
function execStart(unit: string): string[] {
  const line = readFileSync(join(UNITS, unit), 'utf8')
    .split('\n')
    .find((l) => l.startsWith('ExecStart='))
  assert.ok(line, unit)
  return line.slice('ExecStart='.length).trim().split(/\s+/)
}

interface Started {
  readonly child: ChildProcess
  readonly first: Record<string, unknown>
  readonly exited: Promise<number | null>
  stderr(): string
}

/** Runs argv as the unit would: User=spiffe-edge, its groups (tss included). */
async function startAsService(
  argv: string[],
  after: (fn: () => Promise<void>) => void,
  env: NodeJS.ProcessEnv = process.env,
) {
  const child = spawn(
    'setpriv',
    ['--reuid=spiffe-edge', '--regid=spiffe-edge', '--init-groups', '--', ...argv],
    { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/', env },
  )
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)))
  after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL')
    await exited
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    void exited.then((c) => reject(new Error(`${argv.join(' ')} exited ${c}: ${stderr}`)))
  })
  const s: Started = {
    child,
    first: JSON.parse(line) as Record<string, unknown>,
    exited,
    stderr: () => stderr,
  }
  return s
}

function editConf(path: string, edits: [RegExp, string][]): void {
  let text = readFileSync(path, 'utf8')
  for (const [re, v] of edits) {
    assert.match(text, re, `${path}: ${re}`)
    text = text.replace(re, v)
  }
  writeFileSync(path, text)
}

test('the .deb installs, runs server and agent from the units as spiffe-edge, and purges cleanly', {
  skip,
  timeout: 240_000,
}, async (t) => {
  const st = spawnSync('dpkg-query', ['-W', '-f=$' + '{Status}', 'spiffe-edge'], {
    encoding: 'utf8',
  })
  assert.ok(
    !/installed/.test(st.stdout ?? '') || /not-installed/.test(st.stdout ?? ''),
    'spiffe-edge is already installed on this machine: this test will not replace it',
  )
  const out = mkdtempSync(join(tmpdir(), 'spiffe-edge-deb-'))
  t.after(async () => {
    // Whatever happened, the machine is left as it was.
    await run('dpkg', ['-P', 'spiffe-edge'])
    rmSync(out, { recursive: true, force: true })
  })
  const built = await run(join(repoRoot, 'packaging', 'deb', 'build.sh'), [out], {
    env: {
      ...process.env,
      SPIFFE_EDGE_DEB_SKIP_BUILD: '1',
      SPIFFE_EDGE_DEB_COMPRESSION: 'gzip',
    },
  })
  assert.equal(built.code, 0, built.stderr)
  const deb = built.stdout.trim()
  const info = await must('dpkg-deb', ['-f', deb, 'Depends', 'Architecture'])
  assert.match(info, /nodejs \(>= 20\.19\)/)
  // The addons' shared libraries name their packages (tpm2-tss when the TPM addon was built).
  if (existsSync(join(repoRoot, 'build', 'Release', 'tpm_native.node')))
    assert.match(info, /libtss2-esys/)

  await must('dpkg', ['-i', deb])
  // The user the units run as, in the group that owns /dev/tpmrm0.
  const groups = await must('id', ['-nG', 'spiffe-edge'])
  assert.match(groups, /\btss\b/)
  const conf = statSync('/etc/spiffe-edge/agent.conf')
  assert.equal(conf.mode & 0o777, 0o640)
  assert.equal(statSync('/var/lib/spiffe-edge/server').mode & 0o777, 0o700)
  assert.match(await must('/usr/bin/spiffe-edge', ['--version']), /0\.\d+\.\d+/)
  if (has('systemd-analyze')) {
    const v = await run('systemd-analyze', [
      'verify',
      `${UNITS}/spiffe-edge-server.service`,
      `${UNITS}/spiffe-edge-agent.service`,
    ])
    assert.equal(v.code, 0, v.stderr)
  }

  // The server from its unit, on a free port (the example config says 8081).
  editConf('/etc/spiffe-edge/server.conf', [
    [/^bind_address = .*$/m, 'bind_address = "127.0.0.1"'],
    [/^bind_port = .*$/m, 'bind_port = 0'],
  ])
  // Type=notify, as systemd runs it: a NOTIFY_SOCKET (abstract: the service user needs no file
  // permission on it) that must see READY=1 from the main process once the server serves.
  for (const unit of ['spiffe-edge-server.service', 'spiffe-edge-agent.service']) {
    const text = readFileSync(join(UNITS, unit), 'utf8')
    assert.match(text, /^Type=notify$/m, unit)
    assert.match(text, /^NotifyAccess=main$/m, unit)
  }
  const notifyName = `@spiffe-edge-deb-${process.pid}`
  const sd = await notifySocket(notifyName, t)
  const server = await startAsService(execStart('spiffe-edge-server.service'), t.after.bind(t), {
    ...process.env,
    NOTIFY_SOCKET: notifyName,
  })
  const ready = await sd.next()
  assert.equal(ready.fields.READY, '1', JSON.stringify(ready))
  assert.ok(
    Object.values(ready.accepts ?? {}).every((v) => v === true),
    JSON.stringify(ready),
  )
  const address = String(server.first.listening)
  const admin = (...a: string[]) =>
    must('/usr/bin/spiffe-edge', ['server', ...a, '--admin-socket', ADMIN])
  writeFileSync('/etc/spiffe-edge/bundle.pem', await admin('bundle', 'show'))
  const token = JSON.parse(
    await admin('token', 'generate', '-spiffeID', 'spiffe://example.org/gw', '--json'),
  ).value as string
  await admin(
    'entry',
    'create',
    '-parentID',
    'spiffe://example.org/gw',
    '-spiffeID',
    'spiffe://example.org/w',
    '-selector',
    `unix:uid:${process.getuid!()}`,
  )

  // The agent from its unit. systemd would make RuntimeDirectory=spiffe-edge-agent (0755).
  editConf('/etc/spiffe-edge/agent.conf', [
    [/^server_address = .*$/m, `server_address = "${address}"`],
    [/^# join_token = .*$/m, `join_token = "${token}"`],
  ])
  await must('install', [
    '-d',
    '-o',
    'spiffe-edge',
    '-g',
    'spiffe-edge',
    '-m',
    '0755',
    '/run/spiffe-edge-agent',
  ])
  const agent = await startAsService(execStart('spiffe-edge-agent.service'), t.after.bind(t))
  const socket = '/run/spiffe-edge-agent/public/api.sock'
  assert.deepEqual(await fetchValidSvids(socket), ['spiffe://example.org/w'])

  // ExecReload: SIGHUP reopens logs and stops nothing.
  server.child.kill('SIGHUP')
  agent.child.kill('SIGHUP')
  await new Promise((r) => setTimeout(r, 500))
  assert.equal(server.child.exitCode, null, server.stderr())
  assert.equal(agent.child.exitCode, null, agent.stderr())
  assert.deepEqual(await fetchValidSvids(socket), ['spiffe://example.org/w'])
  // systemd stops with SIGTERM: both exit 0.
  agent.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0, agent.stderr())
  assert.equal(await server.exited, 0, server.stderr())

  // remove keeps data and configs; purge takes everything, the user included.
  await must('dpkg', ['-r', 'spiffe-edge'])
  assert.ok(!existsSync('/usr/lib/spiffe-edge') && !existsSync('/usr/bin/spiffe-edge'))
  assert.ok(existsSync('/var/lib/spiffe-edge/server/datastore.sqlite3'))
  assert.ok(existsSync('/etc/spiffe-edge/server.conf'))
  await must('dpkg', ['-P', 'spiffe-edge'])
  for (const p of LEFTOVERS) assert.ok(!existsSync(p), `${p} is left after purge`)
  assert.notEqual((await run('getent', ['passwd', 'spiffe-edge'])).code, 0)
  assert.notEqual((await run('getent', ['group', 'spiffe-edge'])).code, 0)
})
