/**
 * The kept answer of an MQTT attestation frame is written while the answer travels, not before it
 * leaves (one datastore write off the critical path), and retransmits still get it byte for byte.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { MqttNodeClient } from '../../src/transport/mqtt/client.js'
import { codec } from '../../src/transport/proto.js'
import { serverMqttToml, startSpy } from '../helpers/mqtt.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

test('MQTT attestation: the answer is published before it is recorded, and a retransmit after gets the same bytes', async () => {
  await using broker = await startMosquitto({ tls: true })
  await using spy = await startSpy(broker)
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
  })
  // Hold every answer record until released: the agent must get its answer meanwhile.
  const ds = s.server.datastore
  const record = ds.setNonceAnswer.bind(ds)
  let release!: () => void
  const gate = new Promise<void>((r) => {
    release = r
  })
  let recorded = 0
  ds.setNonceAnswer = async (key, answer) => {
    await gate
    await record(key, answer)
    recorded++
  }
  const c = new MqttNodeClient({
    url: broker.url,
    trustDomain: td,
    bundle: s.server.ca.bundle(),
    topicPrefix: 'spiffe-edge',
    ca: readFileSync(broker.caFile!),
    timeoutMs: 60_000,
  })
  try {
    const key = await new MemoryKeyManager().generateKey('agent', 'ec-p256')
    const token = await s.token('spiffe://example.org/gw')
    const attested = c.attestAgent(joinTokenAgentAttestor(token), key)
    // The old order (record, then publish) never answers while the record is held.
    const r = await Promise.race([attested, sleep(8000).then(() => undefined)])
    assert.ok(r, 'no answer while its record was held')
    assert.equal(recorded, 0)
    release()
    while (recorded === 0) await sleep(20)
    // The same params frame again (an agent resending, a QoS 1 redelivery): the kept answer.
    const params = spy.seen.find(
      (m) =>
        m.topic.includes('/bootstrap/') &&
        m.topic.endsWith('/req') &&
        codec.mqttAttestRequest.decode(m.payload).round === 1,
    )!
    const first = spy.seen.find(
      (m) => m.topic === params.responseTopic && m.correlation?.equals(params.correlation!),
    )!
    assert.ok(first)
    const corr = Buffer.alloc(16, 5)
    await spy.client.publishAsync(params.topic, params.payload, {
      qos: 1,
      properties: { correlationData: corr, responseTopic: params.responseTopic! },
    })
    const again = await spy.next(
      (m) => m.topic === params.responseTopic && m.correlation?.equals(corr) === true,
    )
    assert.ok(again.payload.equals(first.payload))
    assert.equal((await s.server.datastore.listAttestedNodes()).length, 1)
  } finally {
    release()
    c.close()
  }
})
