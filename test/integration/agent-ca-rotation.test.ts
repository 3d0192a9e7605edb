import assert from 'node:assert/strict'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { x509 } from '../../src/common/x509.js'
import { parsePemCertificates } from '../../src/spiffe/bundle.js'
import {
  agentArgs,
  fetchValidSvids,
  hostTokenFor,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'

/**
 * Issue 9: an agent bootstrapped from a bundle file pinned those roots for TLS, so once the server
 * SVID came from the next CA, every new connection failed: it could not renew and its SVIDs ran out. Real server and agent
 * processes, a 90 s CA and 10 s workload SVIDs (the agent's own lasts 45 s, so a restart on a loaded
 * machine finds it unexpired, as a production agent_ttl would): across two CA rotations and a
 * restart after the bootstrap CA expired,
 * every fetch from the Workload API returns SVIDs that verify against the fetched bundle, now.
 */
test('a bundle-bootstrapped agent survives CA rotations and a restart after its bootstrap CA expired', {
  timeout: 240_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-rotation-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const serverToml =
    'ca_ttl = "90s"\ndefault_x509_svid_ttl = "10s"\ndefault_jwt_svid_ttl = "10s"\nagent_ttl = "45s"'
  let server = await startServerProcess(dir, t, serverToml)
  const bootstrap = join(dir, 'bootstrap.pem')
  const pem = await server.admin('bundle', 'show')
  writeFileSync(bootstrap, pem)
  const bootstrapCas = parsePemCertificates(pem)
  assert.equal(bootstrapCas.length, 1, 'a fresh server publishes one CA')
  const bootstrapExpires = new x509.X509Certificate(bootstrapCas[0]!).notAfter.getTime()

  const token = await hostTokenFor(server, 'spiffe://example.org/w')
  const config = writeAgentConfig(dir, server.address, 'sync_interval = "1s"')
  // The flag names the bootstrap file on every start, as a systemd unit would.
  const args = agentArgs(config, '--trust-bundle', bootstrap)
  let agent = await startCli([...args, '--join-token', token], t)
  const socket = String(agent.first.socket_path)

  const activations = () => (server.stderr().match(/activated the next X\.509 CA/g) ?? []).length
  let polls = 0
  const poll = async (phase: string) => {
    let ids: string[]
    try {
      ids = await fetchValidSvids(socket)
    } catch (err) {
      assert.fail(
        `${phase}, poll ${polls}, ${activations()} CA rotations: ${(err as Error).message}\nagent log:\n${agent.stderr().slice(-3000)}`,
      )
    }
    assert.deepEqual(ids, ['spiffe://example.org/w'])
    polls++
  }

  // Two rotations, then a server restart: the agent must open new connections with the roots
  // it has now (an established HTTP/2 connection hid the pinned roots until it was replaced).
  while (activations() < 2) {
    await poll('before the server restart')
    await sleep(1000)
  }
  const port = Number(server.address.split(':').pop())
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0, server.stderr())
  server = await startServerProcess(dir, t, serverToml, port)
  // Then past the end of the bootstrap CA.
  while (Date.now() < bootstrapExpires + 1000) {
    await poll('after the server restart')
    await sleep(1000)
  }
  // Restart with only the expired CA in the bootstrap file: the stored bundle must be used.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0, agent.stderr())
  agent = await startCli(args, t)
  const restartedAt = Date.now()
  // Long enough for the workload SVIDs (10 s TTL) to be renewed.
  while (Date.now() < restartedAt + 15_000) {
    await poll('after restart')
    await sleep(1000)
  }
  assert.ok(polls >= 60, `polled ${polls} times`)
  // Renewal is due at the restored SVID's half-life, which can fall just past that window on a
  // loaded machine; it must come before the SVID expires (about 40 s after the restart).
  while (!/agent SVID renewed/.test(agent.stderr()) && Date.now() < restartedAt + 35_000) {
    await poll('after restart, waiting for the renewal')
    await sleep(1000)
  }
  // The restarted agent renewed against CAs the bootstrap file never named.
  assert.match(agent.stderr(), /agent SVID renewed/)
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
})
