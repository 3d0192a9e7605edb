/**
 * A hostile broker: a client with full rights on the broker (the spy) that records every
 * message and replays, alters, moves, duplicates and injects. Each attempt must be refused or
 * survived, with no SVID issued wrongly and nothing stored twice.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { agentTopicKey, mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { MqttNodeClient } from '../../src/transport/mqtt/client.js'
import { type AgentAuth, NodeCallError } from '../../src/transport/node-client.js'
import { codec } from '../../src/transport/proto.js'
import { type Recorded, serverMqttToml, startSpy } from '../helpers/mqtt.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

async function setup() {
  const broker = await startMosquitto({ tls: true })
  const spy = await startSpy(broker)
  const s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
  })
  const client = (prefix = 'spiffe-edge', timeoutMs = 15_000) =>
    new MqttNodeClient({
      url: broker.url,
      trustDomain: td,
      bundle: s.server.ca.bundle(),
      topicPrefix: prefix,
      ca: readFileSync(broker.caFile!),
      timeoutMs,
    })
  const attest = async (c: MqttNodeClient, spiffeId = 'spiffe://example.org/gw') => {
    const keys = new MemoryKeyManager()
    const key = await keys.generateKey('agent', 'ec-p256')
    const token = await s.token(spiffeId)
    const r = await c.attestAgent(joinTokenAgentAttestor(token), key)
    const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
    return { r, auth, keys, token }
  }
  return {
    broker,
    spy,
    s,
    client,
    attest,
    async [Symbol.asyncDispose]() {
      await s[Symbol.asyncDispose]()
      await spy[Symbol.asyncDispose]()
      await broker[Symbol.asyncDispose]()
    },
  }
}

/** Republishes a recorded message as the broker could, optionally changed. */
function republish(
  spy: { client: import('mqtt').MqttClient },
  m: Recorded,
  o: { topic?: string; payload?: Buffer; correlation?: Buffer; responseTopic?: string } = {},
) {
  const correlationData = o.correlation ?? m.correlation
  const responseTopic = o.responseTopic ?? m.responseTopic
  return spy.client.publishAsync(o.topic ?? m.topic, o.payload ?? m.payload, {
    qos: 1,
    properties: {
      ...(correlationData ? { correlationData } : {}),
      ...(responseTopic ? { responseTopic } : {}),
    },
  })
}

const replies = (spy: { seen: Recorded[] }, topic: string) =>
  spy.seen.filter((m) => m.topic === topic).length

test('hostile broker: replayed and duplicated attestation frames get the same signed answer, no second SVID, nothing stored twice', async () => {
  await using h = await setup()
  const c = h.client()
  try {
    const { r } = await h.attest(c)
    const params = h.spy.seen.find((m) => {
      if (!m.topic.endsWith('/req') || !m.topic.includes('/bootstrap/')) return false
      return codec.mqttAttestRequest.decode(m.payload).round === 1
    })!
    assert.ok(params)
    const resTopic = params.responseTopic!
    const first = await h.spy.next(
      (m) => m.topic === resTopic && m.correlation?.equals(params.correlation!) === true,
    )
    // The same frame again under a fresh correlation (a resend after a lost reply, or a replay):
    // the very answer the server gave, byte for byte; no new attestation runs.
    await republish(h.spy, params, { correlation: Buffer.alloc(16, 7) })
    const again = await h.spy.next(
      (m) => m.topic === resTopic && m.correlation?.equals(Buffer.alloc(16, 7)) === true,
    )
    assert.ok(again.payload.equals(first.payload))
    // A changed frame under the same nonce (the challenge response field swapped) gets nothing.
    const f0 = codec.mqttAttestRequest.decode(params.payload)
    const changed = Buffer.from(
      codec.mqttAttestRequest.encode({ ...f0, step: Buffer.concat([f0.step, Buffer.from('x')]) }),
    )
    await republish(h.spy, params, { payload: changed, correlation: Buffer.alloc(16, 6) })
    // Under a new nonce the JWE no longer matches its bound nonce: refused, and signed.
    const f = codec.mqttAttestRequest.decode(params.payload)
    const renonced = Buffer.from(
      codec.mqttAttestRequest.encode({ ...f, nonce: new Uint8Array(16).fill(9) }),
    )
    await republish(h.spy, params, { payload: renonced, correlation: Buffer.alloc(16, 8) })
    const refusal = await h.spy.next(
      (m) => m.topic === resTopic && m.correlation?.equals(Buffer.alloc(16, 8)) === true,
    )
    const res = codec.signedResponse.decode(refusal.payload)
    assert.equal(res.errorReason, 'unknown_key')
    await sleep(1000)
    const answered = (corr: Buffer) =>
      h.spy.seen.filter((m) => m.topic === resTopic && m.correlation?.equals(corr)).length
    assert.equal(answered(Buffer.alloc(16, 6)), 0)
    assert.equal(answered(Buffer.alloc(16, 7)), 1)
    const nodes = await h.s.server.datastore.listAttestedNodes()
    assert.deepEqual(
      nodes.map((n) => n.spiffeId),
      [r.svid.spiffeId],
    )
  } finally {
    c.close()
  }
})

test('hostile broker: replayed, altered and moved requests are refused; a forged reply does not end a call', async () => {
  await using h = await setup()
  const a = h.client()
  const b = h.client()
  try {
    const A = await h.attest(a, 'spiffe://example.org/a')
    const B = await h.attest(b, 'spiffe://example.org/b')
    const entry = await h.s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/w',
      parent_id: 'spiffe://example.org/a',
      selectors: [{ type: 'unix', value: 'uid:1' }],
    })
    const csr = await createCsr(await A.keys.generateKey('w', 'ec-p256'))
    const batch = await a.call(
      'BatchNewX509SVID',
      { params: [{ entryId: String(entry.id), csr }] },
      A.auth,
    )
    assert.equal(batch.results[0]!.status, 0)
    const req = h.spy.seen.find(
      (m) =>
        m.topic.includes('/v1/agent/') &&
        m.topic.endsWith('/req') &&
        codec.signedRequest.decode(m.payload).method === 'BatchNewX509SVID',
    )!
    const answer = async (corr: Buffer, topic = req.responseTopic!) =>
      codec.signedResponse.decode(
        (await h.spy.next((m) => m.topic === topic && m.correlation?.equals(corr) === true))
          .payload,
      )
    // Replayed: the nonce was seen. Refused with a signed reason; no SVID.
    await republish(h.spy, req, { correlation: Buffer.alloc(16, 1) })
    const replay = await answer(Buffer.alloc(16, 1))
    assert.equal(replay.errorReason, 'replay')
    assert.equal(replay.body.length, 0)
    // Altered body: the signature no longer covers it.
    const sr = codec.signedRequest.decode(req.payload)
    const altered = Buffer.from(
      codec.signedRequest.encode({
        ...sr,
        nonce: new Uint8Array(16).fill(3),
        body: Buffer.concat([sr.body, Buffer.from([0x08, 0x01])]),
      }),
    )
    await republish(h.spy, req, { payload: altered, correlation: Buffer.alloc(16, 2) })
    assert.equal((await answer(Buffer.alloc(16, 2))).errorReason, 'signature')
    // Moved to B's request topic: refused as not B's; and B's reply topic as the response topic
    // of A's request topic is never used (the server answers only on the matching topic).
    const tB = mqttTopics('spiffe-edge')
    const kB = agentTopicKey(B.auth.spiffeId)
    const bReq = { topic: tB.agentReq(kB), responseTopic: tB.agentRes(kB) }
    await republish(h.spy, req, {
      topic: bReq.topic,
      responseTopic: bReq.responseTopic!,
      correlation: Buffer.alloc(16, 4),
    })
    assert.equal(
      (await answer(Buffer.alloc(16, 4), bReq.responseTopic!)).errorReason,
      'wrong_topic',
    )
    const bBefore = replies(h.spy, bReq.responseTopic!)
    await republish(h.spy, req, {
      responseTopic: bReq.responseTopic!,
      correlation: Buffer.alloc(16, 5),
    })
    await sleep(1000)
    assert.equal(replies(h.spy, bReq.responseTopic!), bBefore, "answered on another agent's topic")

    // A forged and a replayed reply race the server's: the call still gets the real answer.
    const forging = (m: Recorded) => {
      if (m.topic !== req.topic || !m.correlation) return
      const old = h.spy.seen.find((x) => x.topic === req.responseTopic)!
      void republish(h.spy, old, { topic: req.responseTopic!, correlation: m.correlation })
      const bad = Buffer.from(old.payload)
      bad[bad.length - 1] = bad[bad.length - 1]! ^ 1
      void republish(h.spy, old, {
        topic: req.responseTopic!,
        payload: bad,
        correlation: m.correlation,
      })
    }
    h.spy.client.on('message', (topic, payload, packet) => {
      if (topic === req.topic && packet.properties?.correlationData)
        forging({
          topic,
          payload,
          correlation: packet.properties.correlationData,
          responseTopic: undefined,
          retain: false,
        })
    })
    const sync = await a.call('SyncEntries', { sinceRevision: 0 }, A.auth)
    assert.ok(sync.entries.some((e) => e.spiffeId === 'spiffe://example.org/w'))

    // With no server behind the topic, only forged and replayed replies come: none is taken.
    // (The same agent, so the same client id: `a` leaves first or the broker would swap them.)
    a.close()
    const lone = h.client('no-server', 3000)
    const replayer = (topic: string, _p: Buffer, packet: import('mqtt').IPublishPacket) => {
      if (
        !topic.startsWith('no-server/') ||
        !topic.endsWith('/req') ||
        !packet.properties?.correlationData
      )
        return
      const old = h.spy.seen.find((x) => x.topic === req.responseTopic)!
      void republish(h.spy, old, {
        topic: packet.properties.responseTopic!,
        correlation: packet.properties.correlationData,
      })
    }
    h.spy.client.on('message', replayer)
    try {
      await assert.rejects(
        lone.call('SyncEntries', { sinceRevision: 0 }, A.auth),
        (e: unknown) => e instanceof NodeCallError && e.reason === 'nonce',
      )
    } finally {
      lone.close()
    }
  } finally {
    a.close()
    b.close()
  }
})

test("hostile broker: a forged or stale retained bundle is ignored; the server's newer signed bundle is taken", async () => {
  await using h = await setup()
  await using other = await startTestServer()
  const c = h.client()
  try {
    const A = await h.attest(c)
    const pushed: number[] = []
    c.onBundle((b) => pushed.push(b.sequence))
    await c.call('GetBundle', {}, A.auth) // opens the agent connection (and its bundle subscription)
    const cur = c.currentBundle()!
    const bundleTopic = 'spiffe-edge/v1/bundle'
    const push = async (api: typeof h.s.server.api, sequence: number) => {
      const doc = JSON.parse(h.s.server.ca.bundle().toSpiffeJson()) as Record<string, unknown>
      doc.spiffe_sequence = sequence
      const body = codec.bundlePush.encode({ bundle: JSON.stringify(doc), sequence })
      const res = await api.sign('BundlePush', new Uint8Array(), body, undefined)
      await h.spy.client.publishAsync(bundleTopic, Buffer.from(codec.signedResponse.encode(res)), {
        qos: 1,
        retain: true,
      })
    }
    // Signed by another CA's server (same trust domain name): not chained to our bundle.
    await push(other.server.api, cur.sequence + 5)
    // Our server's signature, but not newer.
    await push(h.s.server.api, cur.sequence)
    // Junk.
    await h.spy.client.publishAsync(bundleTopic, Buffer.from('not a bundle'), {
      qos: 1,
      retain: true,
    })
    await sleep(1500)
    assert.deepEqual(pushed, [])
    assert.equal(c.currentBundle()!.sequence, cur.sequence)
    // Our server, newer: taken.
    await push(h.s.server.api, cur.sequence + 1)
    for (let i = 0; i < 40 && pushed.length === 0; i++) await sleep(100)
    assert.deepEqual(pushed, [cur.sequence + 1])
    assert.equal(c.currentBundle()!.sequence, cur.sequence + 1)
  } finally {
    c.close()
  }
})
