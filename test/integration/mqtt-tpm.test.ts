import assert from 'node:assert/strict'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { fetchValidSvids, processDir } from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { serverMqttToml } from '../helpers/mqtt.js'
import { agentMqttTpmToml, serverTpmToml, startMqttTpmRig } from '../helpers/mqtt-tpm.js'

test('TPM attestation (swtpm) over MQTT with TLS: agent ID from the EK, SVIDs via the Workload API, re-attestation after a restart', {
  timeout: 180_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-mqtt-tpm-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using rig = await startMqttTpmRig()
  const { broker, spy, ekHash } = rig
  const serverConf = join(dir, 'server.conf')
  writeFileSync(
    serverConf,
    '[server]\ntrust_domain = "example.org"\ndata_dir = "./server"\nadmin_socket = "./server/admin.sock"\nlog_level = "info"\nagent_ttl = "16s"\n' +
      `${serverMqttToml(broker)}\n[plugins.KeyManager.disk]\n` +
      serverTpmToml(rig),
  )
  const server = await startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  const sock = String(server.first.admin_socket)
  const agentConf = join(dir, 'agent.conf')
  writeFileSync(
    agentConf,
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${broker.url}"\ndata_dir = "./agent"\n` +
      'socket_path = "./agent/public/api.sock"\ninsecure_bootstrap = true\nlog_level = "info"\n' +
      agentMqttTpmToml(rig),
  )
  const agentId = `spiffe://example.org/spire/agent/tpm/${ekHash}`
  const agent = await startCli(['agent', 'run', '--config', agentConf], t)
  assert.equal(agent.first.agent_id, agentId)

  const admin = (...args: string[]) => cli(['server', ...args, '--admin-socket', sock])
  assert.equal(
    (
      await admin(
        'entry',
        'create',
        '--node',
        '--spiffeID',
        'spiffe://example.org/fleet/sim',
        '--selector',
        `tpm:ek_hash:${ekHash}`,
      )
    ).code,
    0,
  )
  assert.equal(
    (
      await admin(
        'entry',
        'create',
        '--parentID',
        'spiffe://example.org/fleet/sim',
        '--spiffeID',
        'spiffe://example.org/fleet/app',
        '--selector',
        `unix:uid:${process.getuid!()}`,
      )
    ).code,
    0,
  )
  const sockPath = String(agent.first.socket_path)
  let ids: string[] = []
  for (let i = 0; i < 60 && !ids.includes('spiffe://example.org/fleet/app'); i++) {
    ids = await fetchValidSvids(sockPath).catch(() => [])
    if (!ids.length) await new Promise((r) => setTimeout(r, 500))
  }
  assert.deepEqual(ids, ['spiffe://example.org/fleet/app'])

  // A TPM agent renews by attesting again: at half-life, over MQTT, in a new bootstrap session.
  const attested = () => (agent.stderr().match(/"node attested"/g) ?? []).length
  for (let i = 0; i < 120 && attested() < 2; i++) await new Promise((r) => setTimeout(r, 250))
  assert.ok(attested() >= 2, agent.stderr().slice(-2000))
  const sessions = new Set(
    spy.seen.filter((m) => m.topic.includes('/bootstrap/')).map((m) => m.topic.split('/')[3]),
  )
  assert.ok(sessions.size >= 2, [...sessions].join(' '))
  assert.deepEqual(await fetchValidSvids(sockPath), ['spiffe://example.org/fleet/app'])

  // Restart: same agent ID (the EK decides).
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  const again = await startCli(['agent', 'run', '--config', agentConf], t)
  assert.equal(again.first.agent_id, agentId)
  again.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await again.exited, 0)
  assert.equal(await server.exited, 0)
})
