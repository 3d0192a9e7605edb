import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, repoRoot } from '../helpers/exec.js'

test('TPM attestation end to end with the example configs: agent ID from the EK, selectors, SVIDs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-e2e-tpm-'))
  t.after(async () => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  const info = JSON.parse((await cli(['tpm', 'info', '--tcti', sim.tcti, '--json'])).stdout) as {
    endorsement_keys: { algorithm: string; public_key_sha256: string }[]
  }
  const rsaEk = info.endorsement_keys.find((k) => k.algorithm === 'rsa-2048')!

  const server = await startCli(
    [
      'server',
      'run',
      '--config',
      join(repoRoot, 'examples/local/server-tpm.conf'),
      '--data-dir',
      join(dir, 'server'),
      '--admin-socket',
      join(dir, 'server', 'admin.sock'),
      '--port',
      '0',
      '--tpm-ek-ca',
      sim.ekCaBundle,
    ],
    t,
  )
  const sock = String(server.first.admin_socket)
  const agentArgs = [
    'agent',
    'run',
    '--config',
    join(repoRoot, 'examples/local/agent-tpm.conf'),
    '--data-dir',
    join(dir, 'agent'),
    '--socket-path',
    join(dir, 'agent', 'api.sock'),
    '--server-address',
    String(server.first.listening),
    '--tcti',
    sim.tcti,
  ]
  const agent = await startCli(agentArgs, t)
  const agentId = `spiffe://example.org/spire/agent/tpm/${rsaEk.public_key_sha256}`
  assert.equal(agent.first.agent_id, agentId)

  const listed = JSON.parse(
    (await cli(['server', 'agent', 'list', '--admin-socket', sock, '--output', 'json'])).stdout,
  ) as {
    agents: {
      id: { trust_domain: string; path: string }
      attestation_type: string
      selectors: { type: string; value: string }[]
      x509svid_expires_at: string
    }[]
  }
  const a = listed.agents.find((x) => `spiffe://${x.id.trust_domain}${x.id.path}` === agentId)!
  assert.equal(a.attestation_type, 'tpm')
  const sels = a.selectors.map((s) => `${s.type}:${s.value}`)
  assert.ok(sels.includes(`tpm:ek_hash:${rsaEk.public_key_sha256}`), sels.join(' '))
  assert.ok(sels.some((s) => s.startsWith('tpm:pcr:sha256:7:')))
  assert.ok(Number(a.x509svid_expires_at) > Date.now() / 1000)

  // A node alias on the TPM's selectors, and a workload under it.
  await cli([
    'server',
    'entry',
    'create',
    '--admin-socket',
    sock,
    '--node',
    '--spiffeID',
    'spiffe://example.org/fleet/sim',
    '--selector',
    `tpm:ek_hash:${rsaEk.public_key_sha256}`,
  ])
  await cli([
    'server',
    'entry',
    'create',
    '--admin-socket',
    sock,
    '--parentID',
    'spiffe://example.org/fleet/sim',
    '--spiffeID',
    'spiffe://example.org/fleet/app',
    '--selector',
    `unix:uid:${process.getuid!()}`,
  ])
  let fetched = { code: 1, stdout: '', stderr: '' }
  for (let i = 0; i < 50 && fetched.code !== 0; i++) {
    fetched = await cli(['api', 'fetch', 'x509', '--socket-path', join(dir, 'agent', 'api.sock')])
    if (fetched.code !== 0) await new Promise((r) => setTimeout(r, 300))
  }
  assert.equal(fetched.code, 0, fetched.stderr)
  assert.match(fetched.stdout, /spiffe:\/\/example\.org\/fleet\/app/)

  // Restart: same agent ID (the EK decides), attesting again with the same AK.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  const again = await startCli(agentArgs, t)
  assert.equal(again.first.agent_id, agentId)
  again.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await again.exited, 0)
  assert.equal(await server.exited, 0)
})
