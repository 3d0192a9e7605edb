import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLocalJWKSet, jwtVerify } from 'jose'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { TrustBundle } from '../../src/spiffe/bundle.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'
import {
  agentTopicKey,
  type BrokerAccess,
  type BrokerCredentials,
} from '../../src/transport/mqtt/broker-access.js'
import { MqttNodeClient } from '../../src/transport/mqtt/client.js'
import type { AgentAuth } from '../../src/transport/node-client.js'
import { codec } from '../../src/transport/proto.js'
import { serverMqttToml, startSpy } from '../helpers/mqtt.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

async function mqttClient(
  broker: { url: string; caFile?: string },
  bundle: TrustBundle | 'insecure',
  timeoutMs = 15_000,
) {
  return new MqttNodeClient({
    url: broker.url,
    trustDomain: td,
    bundle,
    topicPrefix: 'spiffe-edge',
    ...(broker.caFile ? { ca: readFileSync(broker.caFile) } : {}),
    timeoutMs,
  })
}

async function attest(client: MqttNodeClient, token: string) {
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
  const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
  return { r, auth, keys }
}

test('MQTT over TLS: join token attestation, sync, X.509 and JWT SVIDs; the broker sees no token or JWT; gRPC serves beside it', async () => {
  await using broker = await startMosquitto({ tls: true })
  await using spy = await startSpy(broker)
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
  })
  const token = await s.token('spiffe://example.org/gateway/1')
  const client = await mqttClient(broker, s.server.ca.bundle())
  try {
    const { r, auth, keys } = await attest(client, token)
    assert.equal(r.svid.spiffeId, `spiffe://example.org/spire/agent/join_token/${token}`)
    const web = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/web',
      parent_id: 'spiffe://example.org/gateway/1',
      selectors: [{ type: 'unix', value: 'uid:1000' }],
    })
    const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    assert.deepEqual(full.entries.map((e) => e.spiffeId).sort(), [
      'spiffe://example.org/gateway/1',
      'spiffe://example.org/web',
    ])
    const csr = await createCsr(await keys.generateKey('w', 'ec-p256'))
    const batch = await client.call(
      'BatchNewX509SVID',
      {
        params: [
          { entryId: String(web.id), csr },
          { entryId: 'nope', csr },
        ],
      },
      auth,
    )
    assert.deepEqual(
      batch.results.map((x) => x.status),
      [0, 5],
    )
    assert.equal(batch.results[0]!.svid!.spiffeId, 'spiffe://example.org/web')

    const jwt = await client.call('NewJWTSVID', { entryId: String(web.id), audience: ['db'] }, auth)
    const bundle = await client.call('GetBundle', {}, auth)
    const jwks = JSON.parse(bundle.bundle) as { keys: { use: string }[] }
    const verified = await jwtVerify(
      jwt.token,
      createLocalJWKSet({
        keys: jwks.keys.filter((k) => k.use === 'jwt-svid').map(({ use: _u, ...k }) => k),
      } as never),
      { audience: 'db' },
    )
    assert.equal(verified.payload.sub, 'spiffe://example.org/web')

    // What the broker saw: requests and replies on the layout's topics, the retained bundle...
    await sleep(200)
    const topics = new Set(
      spy.seen.map((m) => m.topic.replace(/bs-[0-9a-f]{32}|[0-9a-f]{32}/, '*')),
    )
    assert.deepEqual([...topics].sort(), [
      'spiffe-edge/v1/agent/*/req',
      'spiffe-edge/v1/agent/*/res',
      'spiffe-edge/v1/bootstrap/*/req',
      'spiffe-edge/v1/bootstrap/*/res',
      'spiffe-edge/v1/bundle',
    ])
    // ...and not the bearer token in any encoding, nor the join token before it was spent.
    const all = spy.bytes()
    const [h, p, sig] = jwt.token.split('.')
    for (const part of [jwt.token, h!, p!, sig!, Buffer.from(p!, 'base64url').toString()]) {
      assert.equal(all.includes(part), false, 'the JWT-SVID crossed the broker readable')
    }
    const bootstrap = Buffer.concat(
      spy.seen
        .filter((m) => m.topic.includes('/bootstrap/') && m.topic.endsWith('/req'))
        .map((m) => m.payload),
    )
    assert.ok(bootstrap.length > 0)
    assert.equal(bootstrap.includes(token), false, 'the join token crossed the broker readable')
    assert.equal(bootstrap.includes(Buffer.from(token, 'hex')), false)

    // gRPC serves beside MQTT: another agent attests and syncs over gRPC at the same time.
    const grpc = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
    try {
      const g = await grpc.attestAgent(
        joinTokenAgentAttestor(await s.token()),
        await keys.generateKey('g', 'ec-p256'),
      )
      assert.match(g.svid.spiffeId, /\/spire\/agent\/join_token\//)
    } finally {
      grpc.close()
    }
  } finally {
    client.close()
  }
})

test('MQTT with broker access: credentials reach the agent encrypted, it reconnects with them on its own topics; eviction revokes them', async () => {
  await using broker = await startMosquitto({ tls: true })
  await using spy = await startSpy(broker)
  const grants: string[] = []
  const revoked: string[] = []
  const password = `pw-${randomBytes(16).toString('hex')}`
  const access: BrokerAccess = {
    async grantAgent(id) {
      grants.push(id)
      return { username: `agent-${agentTopicKey(id)}`, password }
    },
    async revokeAgent(id) {
      revoked.push(id)
    },
    async close() {},
  }
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
    brokerAccess: access,
  })
  const kept: BrokerCredentials[] = []
  const client = new MqttNodeClient({
    url: broker.url,
    trustDomain: td,
    bundle: s.server.ca.bundle(),
    topicPrefix: 'spiffe-edge',
    ca: readFileSync(broker.caFile!),
    username: 'bootstrap',
    password: 'bootstrap-secret',
    onGranted: (c) => kept.push(c),
  })
  try {
    const { r, auth } = await attest(client, await s.token())
    const k = agentTopicKey(r.svid.spiffeId)
    assert.deepEqual(grants, [r.svid.spiffeId])
    assert.deepEqual(kept, [{ username: `agent-${k}`, password }])
    await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    // Mosquitto logs each CONNECT with its client id and username.
    const log = readFileSync(join(broker.stateDir, 'mosquitto.log'), 'utf8')
    assert.match(log, new RegExp(`as agent-${k} \\(.*u'agent-${k}'\\)`))
    assert.match(log, /as bs-[0-9a-f]{32} \(.*u'bootstrap'\)/)
    assert.equal(spy.bytes().includes(password), false, 'the broker password crossed in the clear')
    await s.admin('POST', `/v1/agents/${encodeURIComponent(r.svid.spiffeId)}/evict`)
    assert.deepEqual(revoked, [r.svid.spiffeId])
  } finally {
    client.close()
  }
})

test('MQTT: the broker killed and restarted mid-attestation; the agent sends its frame again and gets its SVID (the join token is not lost)', {
  timeout: 90_000,
}, async () => {
  let broker = await startMosquitto()
  const port = broker.port
  try {
    const spy = await startSpy(broker)
    await using s = await startTestServer({
      extraToml: `attest_rate_per_second = 1000\n${serverMqttToml(broker)}`,
    })
    const token = await s.token()
    const client = await mqttClient(broker, s.server.ca.bundle(), 24_000)
    try {
      const keys = new MemoryKeyManager()
      const attesting = client.attestAgent(
        joinTokenAgentAttestor(token),
        await keys.generateKey('agent', 'ec-p256'),
      )
      attesting.catch(() => undefined)
      await spy.next(
        (m) =>
          m.topic.includes('/bootstrap/') &&
          m.topic.endsWith('/req') &&
          codec.mqttAttestRequest.decode(m.payload).round === 1,
      )
      await broker.stop()
      await Promise.resolve(spy[Symbol.asyncDispose]()).catch(() => undefined)
      await sleep(500)
      broker = await startMosquitto({ port })
      const r = await attesting
      assert.equal(r.svid.spiffeId, `spiffe://example.org/spire/agent/join_token/${token}`)
      assert.equal((await s.server.datastore.listAttestedNodes()).length, 1)
    } finally {
      client.close()
    }
  } finally {
    await broker[Symbol.asyncDispose]()
  }
})
