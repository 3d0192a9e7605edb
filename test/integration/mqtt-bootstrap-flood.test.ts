/**
 * Bootstrap frames need no identity (the bootstrap password is shared by every agent, and the
 * broker itself may send them). A flood of them must not crowd out attested agents' requests,
 * which the server handles through the same broker connection.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { MqttNodeClient } from '../../src/transport/mqtt/client.js'
import type { AgentAuth } from '../../src/transport/node-client.js'
import { codec } from '../../src/transport/proto.js'
import { serverMqttToml, startSpy } from '../helpers/mqtt.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

test('a flood of bootstrap frames does not make the server drop attested agents’ requests', async () => {
  await using broker = await startMosquitto({ tls: true })
  await using spy = await startSpy(broker)
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
  })
  const c = new MqttNodeClient({
    url: broker.url,
    trustDomain: td,
    bundle: s.server.ca.bundle(),
    topicPrefix: 'spiffe-edge',
    ca: readFileSync(broker.caFile!),
    timeoutMs: 4000,
  })
  try {
    const key = await new MemoryKeyManager().generateKey('agent', 'ec-p256')
    const r = await c.attestAgent(
      joinTokenAgentAttestor(await s.token('spiffe://example.org/gw')),
      key,
    )
    const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
    await c.call('GetBundle', {}, auth)
    // Answers to rounds nobody began, on fresh sessions, sent faster than the server refuses them
    // (each waits for its replay-cache claim's commit).
    const t = mqttTopics('spiffe-edge')
    let flooding = true
    let sent = 0
    const flood = (async () => {
      while (flooding) {
        const sends: Promise<unknown>[] = []
        for (let i = 0; i < 500; i++) {
          const id = `bs-${randomBytes(16).toString('hex')}`
          sends.push(
            spy.client.publishAsync(
              t.bootstrapReq(id),
              Buffer.from(
                codec.mqttAttestRequest.encode({
                  nonce: randomBytes(16),
                  round: 2,
                  step: codec.attestRequest.encode({ challengeResponse: randomBytes(32) }),
                }),
              ),
              {
                qos: 0,
                properties: { correlationData: randomBytes(8), responseTopic: t.bootstrapRes(id) },
              },
            ),
          )
        }
        await Promise.all(sends)
        sent += sends.length
        await new Promise((r) => setImmediate(r))
      }
    })()
    let ok = 0
    const failures: string[] = []
    try {
      await new Promise((r) => setTimeout(r, 500))
      for (let i = 0; i < 8; i++) {
        try {
          await c.call('GetBundle', {}, auth)
          ok++
        } catch (err) {
          failures.push((err as Error).message)
        }
      }
    } finally {
      flooding = false
      await flood
    }
    assert.ok(sent > 5000, `the flood ran (${sent} frames)`)
    assert.deepEqual(failures, [], `${ok} of 8 agent calls answered during the flood`)
  } finally {
    c.close()
  }
})
