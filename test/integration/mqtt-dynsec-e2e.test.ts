import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import type { BrokerCredentials } from '../../src/transport/mqtt/broker-access.js'
import { MqttNodeClient } from '../../src/transport/mqtt/client.js'
import { MosquittoDynSec } from '../../src/transport/mqtt/dynsec.js'
import { readPasswordFile } from '../../src/transport/mqtt/dynsec-client.js'
import type { AgentAuth } from '../../src/transport/node-client.js'
import { serverMqttToml } from '../helpers/mqtt.js'
import { startTestServer } from '../helpers/server.js'

test('MQTT + dynsec from [server.mqtt]: the server grants broker credentials after attestation; calls use them; evict deletes the broker client', async () => {
  await using broker = await startMosquitto({ tls: true, dynsec: true })
  const d = broker.dynsec!
  const access = await MosquittoDynSec.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    ca: readFileSync(broker.caFile!),
  })
  await using s = await startTestServer({
    // The server builds its own broker authorization from [server.mqtt] (as an operator configures
    // it); `access` above is a second admin client this test watches the broker with.
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker, `username = "${d.server.username}"\npassword_file = "${d.serverPasswordFile}"\ndynsec_admin_username = "${d.adminUsername}"\ndynsec_admin_password_file = "${d.adminPasswordFile}"\n`)}`,
  })
  let granted: BrokerCredentials | undefined
  const client = new MqttNodeClient({
    url: broker.url,
    trustDomain: TrustDomain.parse('example.org'),
    bundle: s.server.ca.bundle(),
    topicPrefix: 'spiffe-edge',
    ca: readFileSync(broker.caFile!),
    username: d.bootstrap.username,
    password: d.bootstrap.password,
    timeoutMs: 20_000,
    onGranted: (c) => {
      granted = c
    },
  })
  try {
    const token = await s.token('spiffe://example.org/gateway/1')
    const keys = new MemoryKeyManager()
    const key = await keys.generateKey('agent', 'ec-p256')
    const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
    assert.ok(granted, 'the server granted broker credentials')
    assert.match(granted.username, /^agent-[0-9a-f]{32}$/)
    const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
    const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    assert.equal(full.entries.length, 1)
    const info = await access.admin.getClient(granted.username)
    assert.equal(info?.textname, r.svid.spiffeId)
    await s.admin('POST', `/v1/agents/${encodeURIComponent(r.svid.spiffeId)}/evict`)
    // Eviction deletes the broker client (and Mosquitto kicks its connection).
    let gone = false
    for (let i = 0; i < 100 && !gone; i++) {
      gone = (await access.admin.getClient(granted.username)) === undefined
      if (!gone) await sleep(50)
    }
    assert.equal(gone, true)
  } finally {
    client.close()
    await access.close()
  }
})
