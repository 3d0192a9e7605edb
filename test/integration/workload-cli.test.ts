import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { startWorkloadApi, type WorkloadApiServer } from '../../src/agent/workload-api/server.js'
import { agentHealthcheck, apiGroup } from '../../src/cli/api.js'
import { type Group, runCli } from '../../src/cli/command.js'
import { parsePemCertificates } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { MemoryWorkloadSource, sel } from '../helpers/workload-source.js'

const UID = process.getuid!()
const root = mkdtempSync(join(tmpdir(), 'wl-cli-'))
const socket = join(root, 'agent', 'api.sock')
let server: WorkloadApiServer
let source: MemoryWorkloadSource

const tree: Group = {
  kind: 'group',
  name: 'spiffe-edge',
  summary: 'test tree',
  children: [
    apiGroup,
    { kind: 'group', name: 'agent', summary: 'agent', children: [agentHealthcheck] },
  ],
}

async function cli(
  argv: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; out: string; err: string }> {
  let out = ''
  let err = ''
  const code = await runCli(tree, argv, {
    out: (t) => {
      out += t
    },
    err: (t) => {
      err += t
    },
    env,
  })
  return { code, out, err }
}

before(async () => {
  source = await MemoryWorkloadSource.create()
  await source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/web',
    selectors: [sel(`unix:uid:${UID}`)],
    federatesWith: ['federated.test'],
  })
  await source.addEntry({
    id: 'e2',
    spiffeId: 'spiffe://example.org/db',
    selectors: [sel(`unix:uid:${UID}`)],
    hint: 'db',
  })
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

describe('spiffe-edge api', () => {
  test('fetch x509 prints SPIRE-style output', async () => {
    const r = await cli(['api', 'fetch', 'x509', '--socket-path', socket])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^Received 2 svids after \S+\n\n/)
    assert.match(r.out, /SPIFFE ID:\t\tspiffe:\/\/example\.org\/web\n/)
    assert.match(r.out, /Hint:\t\t\tdb\n/)
    assert.match(r.out, /SVID Valid After:\t\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC\n/)
    assert.match(r.out, /SVID Valid Until:\t/)
    assert.match(r.out, /CA #1 Valid After:\t/)
    assert.match(r.out, /\[federated\.test\] CA #1 Valid Until:\t/)
  })

  test('fetch x509 --write writes chain, key (0600), bundles', async () => {
    const dir = join(root, 'out')
    const r = await cli(['api', 'fetch', 'x509', '--socket-path', socket, '--write', dir])
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(readdirSync(dir).sort(), [
      'bundle.0.pem',
      'bundle.1.pem',
      'federated_bundle.0.0.pem',
      'federated_bundle.1.0.pem',
      'svid.0.key',
      'svid.0.pem',
      'svid.1.key',
      'svid.1.pem',
    ])
    assert.equal(statSync(join(dir, 'svid.0.key')).mode & 0o777, 0o600)
    assert.equal(statSync(join(dir, 'svid.0.pem')).mode & 0o777, 0o644)
    assert.equal(statSync(join(dir, 'bundle.0.pem')).mode & 0o777, 0o644)
    const leaf = new X509Certificate(readFileSync(join(dir, 'svid.0.pem')))
    assert.match(leaf.subjectAltName ?? '', /spiffe:\/\/example\.org\/web/)
    const key = createPrivateKey(readFileSync(join(dir, 'svid.0.key')))
    assert.match(readFileSync(join(dir, 'svid.0.key'), 'utf8'), /^-----BEGIN PRIVATE KEY-----/)
    assert.ok(
      createPublicKey(key)
        .export({ type: 'spki', format: 'der' })
        .equals(leaf.publicKey.export({ type: 'spki', format: 'der' })),
    )
    const bundle = parsePemCertificates(readFileSync(join(dir, 'bundle.0.pem'), 'utf8'))
    assert.deepEqual(Buffer.from(bundle[0]!), Buffer.from(source.caOf('example.org')))
    const fed = parsePemCertificates(readFileSync(join(dir, 'federated_bundle.0.0.pem'), 'utf8'))
    assert.deepEqual(Buffer.from(fed[0]!), Buffer.from(source.caOf('federated.test')))
    assert.match(r.out, /Writing key #0 to file .*svid\.0\.key\./)
  })

  test('--output json and SPIFFE_ENDPOINT_SOCKET', async () => {
    const r = await cli(['api', 'fetch', 'x509', '--output', 'json'], {
      SPIFFE_ENDPOINT_SOCKET: `unix://${socket}`,
    })
    assert.equal(r.code, 0, r.err)
    const j = JSON.parse(r.out) as {
      svids: { spiffe_id: string; x509_svid_key: string }[]
      federated_bundles: Record<string, string>
    }
    assert.deepEqual(
      j.svids.map((s) => s.spiffe_id),
      ['spiffe://example.org/web', 'spiffe://example.org/db'],
    )
    assert.deepEqual(Object.keys(j.federated_bundles), ['spiffe://federated.test'])
    const bad = await cli(['api', 'fetch', 'x509', '--output', 'yaml', '--socket-path', socket])
    assert.equal(bad.code, 2)
    assert.match(bad.err, /ERR_USAGE/)
  })

  test('fetch jwt then validate jwt', async () => {
    const missing = await cli(['api', 'fetch', 'jwt', '--socket-path', socket])
    assert.equal(missing.code, 2)
    const r = await cli([
      'api',
      'fetch',
      'jwt',
      '--socket-path',
      socket,
      '--audience',
      'svc-a',
      '--spiffe-id',
      'spiffe://example.org/db',
    ])
    assert.equal(r.code, 0, r.err)
    const m = /^token\(spiffe:\/\/example\.org\/db\):\n\t(\S+)\n/.exec(r.out)
    assert.ok(m, r.out)
    assert.match(r.out, /bundle\(spiffe:\/\/example\.org\):\n\t\{"keys":/)
    const token = m[1]!
    const v = await cli([
      'api',
      'validate',
      'jwt',
      '--socket-path',
      socket,
      '--audience',
      'svc-a',
      '--svid',
      token,
    ])
    assert.equal(v.code, 0, v.err)
    assert.match(v.out, /^SVID is valid\.\nSPIFFE ID : spiffe:\/\/example\.org\/db\nClaims {4}: \{/)
    const vj = await cli([
      'api',
      'validate',
      'jwt',
      '--socket-path',
      socket,
      '--audience',
      'svc-a',
      '--svid',
      token,
      '--output',
      'json',
    ])
    const j = JSON.parse(vj.out) as { spiffe_id: string; claims: { aud: string[] } }
    assert.equal(j.spiffe_id, 'spiffe://example.org/db')
    assert.deepEqual(j.claims.aud, ['svc-a'])
    const bad = await cli([
      'api',
      'validate',
      'jwt',
      '--socket-path',
      socket,
      '--audience',
      'other',
      '--svid',
      token,
      '--json',
    ])
    assert.equal(bad.code, 1)
    assert.equal(
      (JSON.parse(bad.err) as { error: { code: string } }).error.code,
      'ERR_WORKLOAD_API',
    )
  })

  test('fetch bundles', async () => {
    const r = await cli(['api', 'fetch', 'bundles', '--socket-path', socket, '--output', 'json'])
    assert.equal(r.code, 0, r.err)
    const j = JSON.parse(r.out) as { x509_bundles: Record<string, string[]>; jwt_bundles: object }
    assert.deepEqual(Object.keys(j.x509_bundles).sort(), [
      'spiffe://example.org',
      'spiffe://federated.test',
    ])
    const p = await cli(['api', 'fetch', 'bundles', '--socket-path', socket])
    assert.match(p.out, /bundle\(spiffe:\/\/example\.org\):\n\tX\.509 authorities: 1\n/)
  })

  test('watch prints updates and exits after --max-updates', async () => {
    const running = cli(['api', 'watch', '--socket-path', socket, '--max-updates', '2'])
    await new Promise((r) => setTimeout(r, 300))
    await source.addEntry({
      id: 'e3',
      spiffeId: 'spiffe://example.org/third',
      selectors: [sel(`unix:uid:${UID}`)],
    })
    const r = await running
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /Received 2 svids after/)
    assert.match(r.out, /Received 3 svids after/)
    source.removeEntry('e3')
  })

  test('agent healthcheck: healthy exit 0, no agent exit 1', async () => {
    const ok = await cli(['agent', 'healthcheck', '--socket-path', socket])
    assert.equal(ok.code, 0)
    assert.equal(ok.out, 'Agent is healthy.\n')
    const dead = await cli([
      'agent',
      'healthcheck',
      '--socket-path',
      join(root, 'nope.sock'),
      '--timeout',
      '1',
    ])
    assert.equal(dead.code, 1)
    assert.match(dead.err, /^Agent is unhealthy: /)
  })

  test('errors are coded: no agent on the socket', async () => {
    const r = await cli([
      'api',
      'fetch',
      'x509',
      '--socket-path',
      join(root, 'none.sock'),
      '--timeout',
      '1',
      '--json',
    ])
    assert.equal(r.code, 1)
    assert.equal((JSON.parse(r.err) as { error: { code: string } }).error.code, 'ERR_WORKLOAD_API')
    const badAddr = await cli(['api', 'fetch', 'x509', '--socket-path', 'unix://host/x', '--json'])
    assert.equal(badAddr.code, 1)
    assert.equal(
      (JSON.parse(badAddr.err) as { error: { code: string } }).error.code,
      'ERR_WORKLOAD_ENDPOINT',
    )
  })
})
