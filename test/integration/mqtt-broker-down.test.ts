import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { test } from 'node:test'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import {
  agentArgs,
  hostTokenFor,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { freePort } from '../helpers/federation.js'

const HEALTH =
  '\n[health_checks]\nlistener_enabled = true\nbind_address = "127.0.0.1"\nbind_port = "0"\n'

async function ready(port: number): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`http://127.0.0.1:${port}/ready`)
  return { status: r.status, body: (await r.json().catch(() => ({}))) as Record<string, unknown> }
}

test('the server starts while the broker is down: not ready for MQTT, then serves once the broker comes up', {
  timeout: 120_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-mqtt-down-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  const url = `mqtt://127.0.0.1:${port}`
  // Nothing listens on the port: the old code refused to start here (ERR_MQTT_BROKER after 15 s).
  const server = await startServerProcess(dir, t, `${HEALTH}\n[server.mqtt]\nurl = "${url}"\n`)
  const m = /"msg":"health checks listening","address":"127\.0\.0\.1:(\d+)"/.exec(server.stderr())
  assert.ok(m, server.stderr())
  const hp = Number(m[1])
  const down = await ready(hp)
  assert.equal(down.status, 503, JSON.stringify(down.body))
  assert.match(JSON.stringify(down.body), /"mqtt":"disconnected"/)
  assert.match(server.stderr(), /MQTT broker not reachable; retrying/)

  await using broker = await startMosquitto({ port })
  let up = down
  for (let i = 0; i < 80 && up.status !== 200; i++) {
    await new Promise((r) => setTimeout(r, 250))
    up = await ready(hp)
  }
  assert.equal(up.status, 200, JSON.stringify(up.body))
  assert.match(JSON.stringify(up.body), /"mqtt":"connected"/)

  // And it serves: an agent attests and gets its SVID through the broker.
  const token = await hostTokenFor(server, 'spiffe://example.org/app')
  const agentConf = writeAgentConfig(dir, broker.url, 'insecure_bootstrap = true\n')
  const agent = await startCli(agentArgs(agentConf, '--join-token', token), t)
  assert.match(String(agent.first.agent_id), /^spiffe:\/\/example\.org\/spire\/agent\/join_token\//)
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0)
})
