import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import { ConfigError } from '../../src/common/config.js'
import { parseServerConfig } from '../../src/server/config.js'
import { agentTopicKey, mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { decryptBound, decryptWith, encryptTo, newEcdhKey } from '../../src/transport/mqtt/jwe.js'

const agentBase = '[agent]\ntrust_domain = "example.org"\ninsecure_bootstrap = true\n'

test('agent: mqtts:// server_address reads [agent.mqtt] (paths against the config file)', () => {
  const c = parseAgentConfig(
    `${agentBase}server_address = "mqtts://broker.example:8883"\n[agent.mqtt]\ntopic_prefix = "fleet/eu"\nca_file = "ca.pem"\nusername = "boot"\npassword_file = "pw"\n`,
    '/etc/se/agent.conf',
  )
  assert.equal(c.serverAddress, 'mqtts://broker.example:8883')
  assert.deepEqual(c.mqtt, {
    topicPrefix: 'fleet/eu',
    caFile: '/etc/se/ca.pem',
    username: 'boot',
    passwordFile: '/etc/se/pw',
    certFile: undefined,
    keyFile: undefined,
  })
  const grpc = parseAgentConfig(`${agentBase}server_address = "10.0.0.1"\n`, '/a.conf')
  assert.equal(grpc.serverAddress, '10.0.0.1:8081')
  assert.equal(grpc.mqtt, undefined)
})

test('agent and server: bad MQTT settings are all reported', () => {
  assert.throws(
    () =>
      parseAgentConfig(
        `${agentBase}server_address = "mqtts://broker"\n[agent.mqtt]\ntopic_prefix = "a/+/b"\ncert_file = "c"\npassword_file = "p"\ncolor = 1\n`,
        '/a.conf',
      ),
    (e: unknown) => {
      const p = (e as ConfigError).problems.join('\n')
      assert.match(p, /server_address: 'mqtts:\/\/broker' is not mqtts:\/\/host:port/)
      assert.match(p, /topic_prefix/)
      assert.match(p, /cert_file and key_file go together/)
      assert.match(p, /password_file needs username/)
      assert.match(p, /agent\.mqtt\.color: unknown key/)
      return e instanceof ConfigError
    },
  )
  assert.throws(
    () => parseAgentConfig(`${agentBase}server_address = "1.2.3.4:1"\n[agent.mqtt]\n`, '/a.conf'),
    /only used when server_address is an mqtt/,
  )
  const s = parseServerConfig(
    '[server]\ntrust_domain = "example.org"\n[server.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n',
    '/s.conf',
  )
  assert.equal(s.mqtt?.url, 'mqtt://127.0.0.1:1883')
  assert.equal(s.mqtt?.sharedGroup, 'spiffe-edge-server')
  assert.equal(s.mqtt?.topicPrefix, 'spiffe-edge')
  assert.throws(
    () =>
      parseServerConfig(
        '[server]\ntrust_domain = "example.org"\n[server.mqtt]\nurl = "http://x:1"\nshared_group = "a/b"\n',
        '/s.conf',
      ),
    (e: unknown) => /server\.mqtt\.url/.test(String(e)) && /shared_group/.test(String(e)),
  )
})

test('topic layout: the agent key is the first 32 hex chars of sha256(ID)', () => {
  const k = agentTopicKey('spiffe://example.org/spire/agent/x')
  assert.match(k, /^[0-9a-f]{32}$/)
  assert.notEqual(k, agentTopicKey('spiffe://example.org/spire/agent/y'))
  const t = mqttTopics('p')
  assert.equal(t.bootstrapReq('bs-1'), 'p/v1/bootstrap/bs-1/req')
  assert.equal(t.agentRes(k), `p/v1/agent/${k}/res`)
  assert.equal(t.bundle, 'p/v1/bundle')
})

test('JWE: round trip, bound header values, and refusals of foreign keys and ciphertexts', async () => {
  const k = await newEcdhKey()
  const jwe = await encryptTo(k.publicJwk, Buffer.from('secret'), { spe_nonce: 'n1' })
  assert.equal(jwe.includes('secret'), false)
  const d = await decryptBound(k.privateKey, jwe)
  assert.equal(Buffer.from(d.plaintext).toString(), 'secret')
  assert.equal(d.bound.spe_nonce, 'n1')
  // Changing the protected header (here: the bound nonce) breaks the tag.
  const [h, ...rest] = jwe.split('.')
  const header = JSON.parse(Buffer.from(h!, 'base64url').toString()) as Record<string, string>
  header.spe_nonce = 'n2'
  const forged = [Buffer.from(JSON.stringify(header)).toString('base64url'), ...rest].join('.')
  await assert.rejects(decryptWith(k.privateKey, forged), { code: 'ERR_MQTT_ENCRYPTION' })
  // Another key cannot open it.
  await assert.rejects(decryptWith((await newEcdhKey()).privateKey, jwe), {
    code: 'ERR_MQTT_ENCRYPTION',
  })
  // Recipients: only public P-256 JWKs.
  const priv = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({
    format: 'jwk',
  })
  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey.export({
    format: 'jwk',
  })
  for (const bad of [JSON.stringify(priv), JSON.stringify(p384), 'null', '{', 'x'.repeat(2000)]) {
    await assert.rejects(encryptTo(bad, Buffer.from('s')), { code: 'ERR_MQTT_ENCRYPTION' })
  }
  await assert.rejects(decryptWith(k.privateKey, 'a'.repeat(300_000)), {
    code: 'ERR_MQTT_ENCRYPTION',
  })
})
