import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { agentTopicKey, mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { roleAcls } from '../../src/transport/mqtt/dynsec.js'
import { readPasswordFile } from '../../src/transport/mqtt/dynsec-client.js'
import {
  parseClientInfo,
  parseDefaultAcl,
  parseRoleInfo,
} from '../../src/transport/mqtt/dynsec-types.js'

test('agentTopicKey is 32 hex chars of sha256 and mqttTopics follows the shared layout', () => {
  // sha256("spiffe://example.org/a") starts with these 32 hex chars (printf … | openssl dgst -sha256).
  const k = agentTopicKey('spiffe://example.org/a')
  assert.equal(k, '82b77c40cf8cbad97463d0ab0ca8c200')
  assert.notEqual(k, agentTopicKey('spiffe://example.org/b'))
  const t = mqttTopics('fleet/p')
  assert.equal(t.agentReq(k), `fleet/p/v1/agent/${k}/req`)
  assert.equal(t.agentRes(k), `fleet/p/v1/agent/${k}/res`)
  assert.equal(t.bootstrapReq('bs-1'), 'fleet/p/v1/bootstrap/bs-1/req')
  assert.equal(t.bootstrapRes('bs-1'), 'fleet/p/v1/bootstrap/bs-1/res')
  assert.equal(t.bundle, 'fleet/p/v1/bundle')
})

test('role ACLs: agents get literal topics only; nothing but the server may publish the bundle', () => {
  const acls = roleAcls({ topicPrefix: 'P', sharedGroup: 'g' })
  const k = 'a'.repeat(32)
  const agent = acls.agent(k)
  assert.ok(agent.every((a) => a.allow && !a.topic.includes('+') && !a.topic.includes('#')))
  assert.ok(agent.every((a) => a.acltype !== 'subscribePattern'))
  assert.deepEqual(
    agent.filter((a) => a.acltype === 'publishClientSend').map((a) => a.topic),
    [`P/v1/agent/${k}/req`],
  )
  const publishesBundle = (list: typeof agent) =>
    list.some((a) => a.acltype === 'publishClientSend' && a.topic === 'P/v1/bundle')
  assert.equal(publishesBundle(agent), false)
  assert.equal(publishesBundle(acls.bootstrap), false)
  assert.equal(publishesBundle(acls.server), true)
  assert.ok(
    acls.server.some(
      (a) => a.acltype === 'subscribeLiteral' && a.topic === '$share/g/P/v1/agent/+/req',
    ),
  )
  // The bootstrap wildcard is denied above the pattern that allows concrete sessions.
  const deny = acls.bootstrap.find((a) => !a.allow)
  const allow = acls.bootstrap.find((a) => a.acltype === 'subscribePattern')
  assert.equal(deny?.topic, 'P/v1/bootstrap/+/res')
  assert.ok((deny?.priority ?? 0) > (allow?.priority ?? 0))
  assert.throws(() => acls.agent('not-a-key'))
})

test('role ACLs refuse prefixes and groups that are not topic-safe', () => {
  for (const topicPrefix of ['', 'a/+/b', 'a/#', '$SYS', 'a//b', 'a/']) {
    assert.throws(() => roleAcls({ topicPrefix }), { code: 'ERR_CONFIG' }, topicPrefix)
  }
  for (const sharedGroup of ['', 'a/b', '+', 'x#']) {
    assert.throws(() => roleAcls({ sharedGroup }), { code: 'ERR_CONFIG' }, sharedGroup)
  }
})

test('dynsec replies are validated before use', () => {
  assert.deepEqual(
    parseClientInfo({ client: { username: 'u', clientid: 'c', roles: [{ rolename: 'r' }] } }),
    { username: 'u', clientid: 'c', roles: [{ rolename: 'r' }], groups: [] },
  )
  assert.throws(() => parseClientInfo({ client: { roles: [] } }), { code: 'ERR_BROKER_ADMIN' })
  assert.throws(() => parseClientInfo({ client: { username: 'u', roles: [{}] } }), {
    code: 'ERR_BROKER_ADMIN',
  })
  assert.throws(
    () =>
      parseRoleInfo({
        role: { rolename: 'r', acls: [{ acltype: 'bogus', topic: 't', allow: true }] },
      }),
    { code: 'ERR_BROKER_ADMIN' },
  )
  assert.deepEqual(
    parseRoleInfo({
      role: { rolename: 'r', acls: [{ acltype: 'subscribeLiteral', topic: 't', allow: false }] },
    }),
    {
      rolename: 'r',
      acls: [{ acltype: 'subscribeLiteral', topic: 't', allow: false, priority: 0 }],
    },
  )
  const d = parseDefaultAcl({
    acls: [
      { acltype: 'publishClientSend', allow: false },
      { acltype: 'publishClientReceive', allow: true },
      { acltype: 'subscribe', allow: false },
      { acltype: 'unsubscribe', allow: true },
    ],
  })
  assert.deepEqual(d, {
    publishClientSend: false,
    publishClientReceive: true,
    subscribe: false,
    unsubscribe: true,
  })
  assert.throws(() => parseDefaultAcl({ acls: [] }), { code: 'ERR_BROKER_ADMIN' })
})

test('readPasswordFile: owner-only, small, one line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-pwfile-'))
  try {
    const f = join(dir, 'pw')
    writeFileSync(f, 'secret\n', { mode: 0o600 })
    assert.equal(readPasswordFile(f), 'secret')
    chmodSync(f, 0o640)
    assert.throws(() => readPasswordFile(f), { code: 'ERR_CONFIG' })
    writeFileSync(join(dir, 'big'), 'x'.repeat(2000), { mode: 0o600 })
    assert.throws(() => readPasswordFile(join(dir, 'big')), { code: 'ERR_CONFIG' })
    writeFileSync(join(dir, 'two'), 'a\nb\n', { mode: 0o600 })
    assert.throws(() => readPasswordFile(join(dir, 'two')), { code: 'ERR_CONFIG' })
    assert.throws(() => readPasswordFile(join(dir, 'missing')), { code: 'ERR_CONFIG' })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
