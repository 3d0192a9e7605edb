/**
 * The server's topic check reads the agent a signed request claims to be from; the leaf is parsed
 * once per certificate, not once per call (~1 ms of every MQTT call before).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { claimedAgentKey } from '../../src/server/mqtt.js'
import { parseCert, uriSans } from '../../src/spiffe/x509-cert.js'
import { agentTopicKey } from '../../src/transport/mqtt/broker-access.js'
import { codec } from '../../src/transport/proto.js'

const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }

async function leaf(uris: string[]): Promise<Uint8Array> {
  const keys = await crypto.subtle.generateKey(alg, true, ['sign', 'verify'])
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=agent',
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: 'url', value }))),
    ],
  })
  return new Uint8Array(c.rawData)
}

const request = (chain: Uint8Array[]) =>
  codec.signedRequest.encode({
    method: 'SyncEntries',
    nonce: new Uint8Array(16),
    timestampMs: Date.now(),
    body: new Uint8Array(100),
    agentChain: chain,
    signature: new Uint8Array(64),
  })

test('claimedAgentKey: the leaf URI topic key, each certificate on its own, parsed once', async () => {
  const a = 'spiffe://example.org/spire/agent/join_token/a'
  const b = 'spiffe://example.org/spire/agent/join_token/b'
  const la = await leaf([a])
  const lb = await leaf([b])
  const two = await leaf([a, b])
  assert.equal(claimedAgentKey(request([la])), agentTopicKey(a))
  assert.equal(claimedAgentKey(request([lb])), agentTopicKey(b))
  assert.equal(claimedAgentKey(request([two])), undefined)
  assert.equal(claimedAgentKey(request([])), undefined)
  assert.equal(claimedAgentKey(request([new Uint8Array([1, 2, 3])])), undefined)
  assert.equal(claimedAgentKey(new Uint8Array([0xff, 0xff])), undefined)
  // Again, from the cache: the same answers.
  assert.equal(claimedAgentKey(request([la])), agentTopicKey(a))
  assert.equal(claimedAgentKey(request([two])), undefined)
  // 500 calls with one leaf cost far less than 500 parses (a 5x margin for a loaded machine).
  const req = request([la])
  let t = performance.now()
  for (let i = 0; i < 50; i++) uriSans(parseCert(la, 'x').p)
  const parse = (performance.now() - t) / 50
  t = performance.now()
  for (let i = 0; i < 500; i++) claimedAgentKey(req)
  const cached = performance.now() - t
  assert.ok(cached < (500 * parse) / 5, `${cached.toFixed(1)} ms for 500, a parse ${parse} ms`)
})
