import assert from 'node:assert/strict'
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { startWorkloadApi, type WorkloadApiServer } from '../../src/agent/workload-api/server.js'
import { apiGroup } from '../../src/cli/api.js'
import { type Group, runCli } from '../../src/cli/command.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { cliPath, run } from '../helpers/exec.js'
import { MemoryWorkloadSource, sel } from '../helpers/workload-source.js'

const UID = process.getuid!()
const root = mkdtempSync(join(tmpdir(), 'wl-cli-hard-'))
const socket = join(root, 'agent', 'api.sock')
let server: WorkloadApiServer

const tree: Group = { kind: 'group', name: 'spiffe-edge', summary: 'test', children: [apiGroup] }

before(async () => {
  const source = await MemoryWorkloadSource.create()
  for (let i = 0; i < 40; i++) {
    await source.addEntry({
      id: `e${i}`,
      spiffeId: `spiffe://example.org/w${i}`,
      selectors: [sel(`unix:uid:${UID}`)],
    })
  }
  server = await startWorkloadApi({
    socketPath: socket,
    source,
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
  })
})

after(async () => {
  await server.close()
  rmSync(root, { recursive: true, force: true })
})

describe('spiffe-edge api hardening', () => {
  test('fetch x509 --write replaces planted symlinks instead of writing through them', async () => {
    const dir = join(root, 'out')
    mkdirSync(dir)
    const victim = join(root, 'victim.txt')
    writeFileSync(victim, 'precious\n', { mode: 0o644 })
    symlinkSync(victim, join(dir, 'svid.0.key'))
    symlinkSync(join(root, 'not-there-yet'), join(dir, 'svid.0.pem'))
    let err = ''
    const code = await runCli(
      tree,
      ['api', 'fetch', 'x509', '--silent', '--socket-path', socket, '--write', dir],
      {
        out: () => undefined,
        err: (t) => {
          err += t
        },
        env: {},
      },
    )
    assert.equal(code, 0, err)
    // The attacker's files are untouched (and not created), ours are regular files.
    assert.equal(readFileSync(victim, 'utf8'), 'precious\n')
    assert.throws(() => lstatSync(join(root, 'not-there-yet')), { code: 'ENOENT' })
    const key = lstatSync(join(dir, 'svid.0.key'))
    assert.ok(key.isFile() && !key.isSymbolicLink())
    assert.equal(key.mode & 0o777, 0o600)
    assert.match(readFileSync(join(dir, 'svid.0.key'), 'utf8'), /^-----BEGIN PRIVATE KEY-----/)
    assert.ok(lstatSync(join(dir, 'svid.0.pem')).isFile())
    // No temporary files are left behind.
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith('.tmp')),
      [],
    )
    // A second write over our own files works too (rename replaces them).
    const again = await runCli(
      tree,
      ['api', 'fetch', 'x509', '--silent', '--socket-path', socket, '--write', dir],
      {
        out: () => undefined,
        err: () => undefined,
        env: {},
      },
    )
    assert.equal(again, 0)
    assert.equal(statSync(join(dir, 'svid.0.key')).mode & 0o777, 0o600)
  })

  test('piped into a reader that closes early, the CLI exits quietly (no EPIPE trace)', async () => {
    // `true` never reads; `head -c 100` reads a little and closes while 40 SVIDs are printed.
    for (const reader of ['true', 'head -c 100 >/dev/null']) {
      for (const cmd of [
        `'${process.execPath}' '${cliPath}' --help`,
        `'${process.execPath}' '${cliPath}' api fetch x509 --socket-path '${socket}'`,
        `'${process.execPath}' '${cliPath}' api watch --socket-path '${socket}' --max-updates 1`,
      ]) {
        const r = await run('bash', ['-c', `${cmd} | ${reader}; echo "rc=\${PIPESTATUS[0]}" >&2`])
        assert.doesNotMatch(r.stderr, /EPIPE|at .*\.js:\d+/, `${cmd} | ${reader}`)
        assert.match(r.stderr, /rc=0\n/, `${cmd} | ${reader}: ${r.stderr}`)
      }
    }
  })
})
