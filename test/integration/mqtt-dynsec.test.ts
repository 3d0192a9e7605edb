/**
 * Broker authorization against a real Mosquitto 2 with TLS and the dynamic security plugin: what
 * the broker itself refuses (SUBACK / PUBACK 0x87, CONNACK 0x86/0x87, disconnects), for agents,
 * bootstrap sessions and the server role the code in src/transport/mqtt/dynsec.ts sets up.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test } from 'node:test'
import type { MqttClient } from 'mqtt'
import { type MosquittoBroker, startMosquitto } from '../../hardware-sim/mosquitto.js'
import { agentTopicKey, mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { MosquittoDynSec, roleAcls } from '../../src/transport/mqtt/dynsec.js'
import { readPasswordFile } from '../../src/transport/mqtt/dynsec-client.js'
import {
  caOf,
  closedWithin,
  connectAs,
  connectReason,
  GRANTED_QOS1,
  NOT_AUTHORIZED,
  nextMessage,
  pubReason,
  subReason,
} from '../helpers/mqtt-probe.js'

const t = mqttTopics('spiffe-edge')
const GROUP = 'spiffe-edge-server'
const ALICE = 'spiffe://example.org/spire/agent/tpm/alice'
const BOB = 'spiffe://example.org/spire/agent/tpm/bob'
const session = (): string => `bs-${randomBytes(16).toString('hex')}`

let broker: MosquittoBroker
let dynsec: MosquittoDynSec
let server: MqttClient
const clients: MqttClient[] = []

async function open(creds: { username: string; password: string }, id: string) {
  const c = await connectAs(broker, creds, id)
  clients.push(c)
  return c
}

before(async () => {
  broker = await startMosquitto({ tls: true, dynsec: true })
  const d = broker.dynsec!
  dynsec = await MosquittoDynSec.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    ca: caOf(broker),
  })
  await dynsec.ensureRoles()
  server = await open(d.server, 'spiffe-edge-server-1')
})

after(async () => {
  for (const c of clients) c.end(true)
  await dynsec?.close()
  await broker?.[Symbol.asyncDispose]()
})

test('an agent uses its own topics end to end; the server answers and pushes the bundle', async () => {
  const creds = await dynsec.grantAgent(ALICE)
  const k = agentTopicKey(ALICE)
  assert.equal(creds.username, `agent-${k}`)
  assert.ok(creds.password.length >= 32)
  assert.equal(await subReason(server, `$share/${GROUP}/${t.agentReq('+')}`), GRANTED_QOS1)
  assert.equal(await subReason(server, `$share/${GROUP}/${t.bootstrapReq('+')}`), GRANTED_QOS1)

  const agent = await open(creds, `agent-${k}`)
  assert.equal(await subReason(agent, t.agentRes(k)), GRANTED_QOS1)
  assert.equal(await subReason(agent, t.bundle), GRANTED_QOS1)
  const request = nextMessage(server, t.agentReq(k))
  assert.equal(await pubReason(agent, t.agentReq(k), 'hello'), 0)
  assert.equal(await request, 'hello')
  const reply = nextMessage(agent, t.agentRes(k))
  assert.equal(await pubReason(server, t.agentRes(k), 'welcome'), 0)
  assert.equal(await reply, 'welcome')
  const bundle = nextMessage(agent, t.bundle)
  assert.equal(await pubReason(server, t.bundle, 'signed-bundle', true), 0)
  assert.equal(await bundle, 'signed-bundle')
})

test("the broker refuses an agent another agent's topics, the server's and the bundle's publish", async () => {
  const alice = await dynsec.grantAgent(ALICE)
  await dynsec.grantAgent(BOB)
  const ka = agentTopicKey(ALICE)
  const kb = agentTopicKey(BOB)
  const agent = await open(alice, `agent-${ka}`)
  const refusedFilters = [
    t.agentRes(kb),
    t.agentReq(kb),
    t.agentReq(ka),
    t.agentRes('+'),
    t.agentReq('+'),
    `$share/${GROUP}/${t.agentReq('+')}`,
    `$share/${GROUP}/${t.bootstrapReq('+')}`,
    `$share/any/${t.agentRes(ka)}`,
    t.bootstrapRes(session()),
    'spiffe-edge/#',
    '#',
    '$SYS/#',
    '$CONTROL/dynamic-security/#',
  ]
  for (const f of refusedFilters) {
    assert.equal(await subReason(agent, f), NOT_AUTHORIZED, `subscribe ${f}`)
  }
  for (const topic of [
    t.agentReq(kb),
    t.agentRes(ka),
    t.agentRes(kb),
    t.bundle,
    t.bootstrapReq(session()),
  ]) {
    assert.equal(await pubReason(agent, topic), NOT_AUTHORIZED, `publish ${topic}`)
  }
  assert.equal(await pubReason(agent, t.bundle, 'forged', true), NOT_AUTHORIZED)
  // The admin API is closed to it too (publishes there are refused, not executed).
  assert.equal(
    await pubReason(agent, '$CONTROL/dynamic-security/v1', '{"commands":[]}'),
    NOT_AUTHORIZED,
  )
  // Credentials are pinned to the agent's client id.
  assert.equal(await connectReason(broker, alice, `agent-${kb}`), NOT_AUTHORIZED)
  assert.equal(await connectReason(broker, alice, session()), NOT_AUTHORIZED)
  assert.ok(agent.connected)
})

test('a bootstrap client uses its own session; wildcards over sessions and other topics are refused', async () => {
  const creds = broker.dynsec!.bootstrap
  const mine = session()
  const c = await open(creds, mine)
  assert.equal(await subReason(c, t.bootstrapRes(mine)), GRANTED_QOS1)
  const request = nextMessage(server, t.bootstrapReq(mine))
  assert.equal(await pubReason(c, t.bootstrapReq(mine), 'attest'), 0)
  assert.equal(await request, 'attest')
  const reply = nextMessage(c, t.bootstrapRes(mine))
  assert.equal(await pubReason(server, t.bootstrapRes(mine), 'challenge'), 0)
  assert.equal(await reply, 'challenge')

  const k = agentTopicKey(ALICE)
  for (const f of [
    t.bootstrapRes('+'),
    t.bootstrapReq('+'),
    t.bootstrapReq(mine),
    'spiffe-edge/v1/bootstrap/#',
    '+/v1/bootstrap/+/res',
    `$share/${GROUP}/${t.bootstrapReq('+')}`,
    `$share/x/${t.bootstrapRes('+')}`,
    t.agentRes(k),
    t.bundle,
    '#',
  ]) {
    assert.equal(await subReason(c, f), NOT_AUTHORIZED, `subscribe ${f}`)
  }
  for (const topic of [t.bootstrapRes(mine), t.agentReq(k), t.agentRes(k), t.bundle]) {
    assert.equal(await pubReason(c, topic), NOT_AUTHORIZED, `publish ${topic}`)
  }
})

test('limitation (Mosquitto 2.0 has no %c in dynsec): a known session id is reachable by name', async () => {
  // What isolates bootstrap sessions is the 128-bit session id, not the broker: a bootstrap
  // client that learned another id may name it. This test pins that behaviour so a broker
  // upgrade that changes it is noticed (then the role can use %c, see dynsec.ts).
  const c = await open(broker.dynsec!.bootstrap, session())
  const other = session()
  assert.equal(await subReason(c, t.bootstrapRes(other)), GRANTED_QOS1)
  assert.equal(await pubReason(c, t.bootstrapReq(other)), 0)
  const acls = roleAcls().bootstrap
  assert.ok(acls.some((a) => a.acltype === 'subscribeLiteral' && !a.allow))
})

test('revokeAgent disconnects the live client, refuses its reconnect, and is idempotent', async () => {
  const creds = await dynsec.grantAgent(BOB)
  const k = agentTopicKey(BOB)
  const agent = await open(creds, `agent-${k}`)
  let reason: number | undefined
  agent.on('disconnect', (p) => {
    reason = p.reasonCode
  })
  await dynsec.revokeAgent(BOB)
  assert.equal(await closedWithin(agent), true, 'the broker kicked the revoked client')
  // 0x98: disconnected by administrative action.
  assert.equal(reason, 0x98)
  // Mosquitto 2.0 answers a wrong or unknown user with CONNACK 0x87, not 0x86.
  assert.equal(await connectReason(broker, creds, `agent-${k}`), NOT_AUTHORIZED)
  assert.equal(await dynsec.admin.getClient(creds.username), undefined)
  assert.equal(await dynsec.admin.getRole(dynsec.agentRole(k)), undefined)
  await dynsec.revokeAgent(BOB)
})

test('grantAgent again rotates the password: the old one is refused, the live session is kicked', async () => {
  const first = await dynsec.grantAgent(ALICE)
  const k = agentTopicKey(ALICE)
  const agent = await open(first, `agent-${k}`)
  const second = await dynsec.grantAgent(ALICE)
  assert.equal(second.username, first.username)
  assert.notEqual(second.password, first.password)
  assert.equal(await closedWithin(agent), true)
  assert.equal(await connectReason(broker, first, `agent-${k}`), NOT_AUTHORIZED)
  const again = await open(second, `agent-${k}`)
  assert.equal(await subReason(again, t.agentRes(k)), GRANTED_QOS1)
})

test('grantAgent replaces a tampered client and repairs its role', async () => {
  const k = agentTopicKey(ALICE)
  await dynsec.grantAgent(ALICE)
  // Someone widened the agent: an extra role with '#', and an extra ACL on its own role.
  await dynsec.admin.createRole('extra-wide', [
    { acltype: 'subscribePattern', topic: '#', allow: true },
  ])
  await dynsec.admin.addClientRole(`agent-${k}`, 'extra-wide')
  await dynsec.admin.addRoleACL(dynsec.agentRole(k), {
    acltype: 'subscribePattern',
    topic: t.agentRes('+'),
    allow: true,
  })
  const creds = await dynsec.grantAgent(ALICE)
  const info = await dynsec.admin.getClient(creds.username)
  assert.deepEqual(
    info?.roles.map((r) => r.rolename),
    [dynsec.agentRole(k)],
  )
  const role = await dynsec.admin.getRole(dynsec.agentRole(k))
  const key = (a: { acltype: string; topic: string }) => `${a.acltype} ${a.topic}`
  assert.deepEqual(role?.acls.map(key).sort(), roleAcls().agent(k).map(key).sort())
  const agent = await open(creds, `agent-${k}`)
  assert.equal(await subReason(agent, '#'), NOT_AUTHORIZED)
  assert.equal(await subReason(agent, t.agentRes('+')), NOT_AUTHORIZED)
  await dynsec.admin.deleteRole('extra-wide')
})

test('ensureRoles repairs the bootstrap role and refuses a broker that allows by default', async () => {
  await dynsec.admin.addRoleACL(dynsec.bootstrapRole, {
    acltype: 'subscribePattern',
    topic: '#',
    allow: true,
  })
  await dynsec.ensureRoles()
  const role = await dynsec.admin.getRole(dynsec.bootstrapRole)
  assert.equal(role?.acls.length, roleAcls().bootstrap.length)
  assert.ok(!role?.acls.some((a) => a.topic === '#'))

  const safe = await dynsec.admin.getDefaultACLAccess()
  await dynsec.admin.setDefaultACLAccess({ ...safe, subscribe: true })
  try {
    await assert.rejects(dynsec.ensureRoles(), { code: 'ERR_BROKER_ADMIN_UNSAFE' })
  } finally {
    await dynsec.admin.setDefaultACLAccess(safe)
  }
  await dynsec.ensureRoles()
})

test('two replicas granting one agent at once both succeed; exactly one password stands', async () => {
  const d = broker.dynsec!
  const replica = await MosquittoDynSec.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    ca: caOf(broker),
  })
  try {
    const carol = 'spiffe://example.org/spire/agent/tpm/carol'
    const k = agentTopicKey(carol)
    const [a, b] = await Promise.all([dynsec.grantAgent(carol), replica.grantAgent(carol)])
    const reasons = [
      await connectReason(broker, a, `agent-${k}`),
      await connectReason(broker, b, `agent-${k}`),
    ]
    assert.deepEqual(reasons.sort(), [0, NOT_AUTHORIZED])
    const role = await dynsec.admin.getRole(dynsec.agentRole(k))
    assert.equal(role?.acls.length, roleAcls().agent(k).length)
    await Promise.all([dynsec.revokeAgent(carol), replica.revokeAgent(carol)])
    assert.equal(await dynsec.admin.getClient(`agent-${k}`), undefined)
  } finally {
    await replica.close()
  }
})
