import assert from 'node:assert/strict'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import {
  agentArgs,
  fetchValidSvids,
  hostTokenFor,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { agentMqttToml, serverMqttToml, startSpy } from '../helpers/mqtt.js'

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  while (Date.now() < end) {
    try {
      const v = await fn()
      if (v !== undefined) return v
    } catch (err) {
      last = err
    }
    await sleep(250)
  }
  throw new Error(`timed out waiting for ${what}: ${(last as Error | undefined)?.message ?? ''}`)
}

test('server and agent processes over MQTT (TLS): Workload API X.509 and JWT SVIDs as with gRPC, agent renewal, no token on the broker', {
  timeout: 120_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-mqtt-e2e-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using broker = await startMosquitto({ tls: true })
  await using spy = await startSpy(broker)
  const server = await startServerProcess(
    dir,
    t,
    `agent_ttl = "20s"\ndefault_x509_svid_ttl = "1h"\nattest_rate_per_second = 100\n${serverMqttToml(broker)}`,
  )
  writeFileSync(join(dir, 'bundle.pem'), await server.admin('bundle', 'show'))
  const token = await hostTokenFor(server, 'spiffe://example.org/me')
  const config = writeAgentConfig(
    dir,
    broker.url,
    `trust_bundle_path = "${join(dir, 'bundle.pem')}"\nsync_interval = "1s"\n${agentMqttToml(broker)}`,
  )
  const agent = await startCli(agentArgs(config, '--join-token', token), t)
  const sock = String(agent.first.socket_path)
  assert.deepEqual(await fetchValidSvids(sock), ['spiffe://example.org/me'])

  const jwt = await cli([
    'api',
    'fetch',
    'jwt',
    '--socket-path',
    sock,
    '--audience',
    'db',
    '--output',
    'json',
  ])
  assert.equal(jwt.code, 0, jwt.stderr)
  const jwtText = jwt.stdout.match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/)?.[0]
  assert.ok(jwtText, jwt.stdout)
  const v = await cli([
    'api',
    'validate',
    'jwt',
    '--socket-path',
    sock,
    '--audience',
    'db',
    '--svid',
    jwtText,
  ])
  assert.equal(v.code, 0, v.stderr)

  // The agent SVID (20 s) is renewed over MQTT before it runs out, and serving goes on.
  await waitFor('an agent SVID renewal', async () =>
    agent.stderr().includes('agent SVID renewed') ? true : undefined,
  )
  assert.deepEqual(await fetchValidSvids(sock), ['spiffe://example.org/me'])

  const all = spy.bytes()
  assert.equal(all.includes(jwtText.split('.')[1]!), false, 'a JWT-SVID crossed the broker')
  // The token is the secret until it is spent: no attestation request carries it readable. (Once spent it
  // is part of the agent ID, SPIFFE's join_token shape, so it appears in the agent SVID.)
  const bootstrap = Buffer.concat(
    spy.seen
      .filter((m) => m.topic.includes('/bootstrap/') && m.topic.endsWith('/req'))
      .map((m) => m.payload),
  )
  assert.equal(bootstrap.includes(token), false, 'the join token crossed the broker')
})

test('MQTT: the broker killed and restarted mid-sync; the agent recovers alone and the Workload API keeps serving', {
  timeout: 180_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-mqtt-restart-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  let broker = await startMosquitto()
  t.after(() => broker[Symbol.asyncDispose]())
  const port = broker.port
  const server = await startServerProcess(
    dir,
    t,
    `attest_rate_per_second = 100\n${serverMqttToml(broker)}`,
  )
  const token = JSON.parse(
    await server.admin('token', 'generate', '--spiffeID', 'spiffe://example.org/host', '--json'),
  ).value as string
  const uid = process.getuid!()
  await server.admin(
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    'spiffe://example.org/one',
    '--selector',
    `unix:uid:${uid}`,
  )
  const config = writeAgentConfig(
    dir,
    broker.url,
    `insecure_bootstrap = true\nsync_interval = "1s"\n${agentMqttToml(broker)}`,
  )
  const agent = await startCli(agentArgs(config, '--join-token', token), t)
  const sock = String(agent.first.socket_path)
  assert.deepEqual(await fetchValidSvids(sock), ['spiffe://example.org/one'])

  await broker.stop()
  // While the broker is gone: a new entry, and the workload still gets what the agent holds.
  await server.admin(
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    'spiffe://example.org/two',
    '--selector',
    `unix:uid:${uid}`,
  )
  await sleep(3000)
  assert.deepEqual(await fetchValidSvids(sock), ['spiffe://example.org/one'])
  await waitFor('a failed sync', async () =>
    agent.stderr().includes('sync failed') ? true : undefined,
  )

  broker = await startMosquitto({ port })
  const ids = await waitFor(
    'the entry made while the broker was down',
    async () => {
      const got = (await fetchValidSvids(sock)).sort()
      return got.length === 2 ? got : undefined
    },
    90_000,
  )
  assert.deepEqual(ids, ['spiffe://example.org/one', 'spiffe://example.org/two'])
  assert.equal(agent.child.exitCode, null)
})
