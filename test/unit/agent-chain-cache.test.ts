import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { AgentChainCache } from '../../src/server/agent-chain-cache.js'
import { X509Bundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'

const td = TrustDomain.parse('example.org')
const t0 = Date.parse('2026-06-01T00:00:00Z')
const h = (n: number) => new Date(t0 + n * 3600_000)
const km = new MemoryKeyManager()

async function ca(id: string, notAfter = h(48)) {
  const key = await km.generateKey(id, 'ec-p256')
  const der = await issueX509Ca({
    subjectPublicKey: key.publicKey,
    trustDomain: td,
    selfSigner: key,
    notBefore: new Date(t0),
    notAfter,
  })
  return { key, der }
}

const caA = await ca('a')
const caB = await ca('b')
const agentKey = await km.generateKey('agent', 'ec-p256')
const agentId = SpiffeId.parse('spiffe://example.org/spire/agent/join_token/x')
const leafOf = (issuer: { key: typeof agentKey; der: Uint8Array }, notAfter = h(10)) =>
  issueX509Svid({
    subjectPublicKey: agentKey.publicKey,
    spiffeId: agentId,
    issuer: { certificate: issuer.der, signer: issuer.key },
    notBefore: new Date(t0),
    notAfter,
  })
const leafA = await leafOf(caA)
const leafOfB = await leafOf(caB)
const bundleA = new X509Bundle(td, [caA.der])
const now = t0 + 3600_000

test('a validated chain is served from the cache with the same answer', () => {
  const c = new AgentChainCache()
  const first = c.validate([leafA], td, bundleA, now)
  const again = c.validate([leafA], td, new X509Bundle(td, [caA.der]), now + 1000)
  assert.equal(c.misses, 1)
  assert.equal(again, first)
  assert.equal(first.spiffeId.toString(), agentId.toString())
  assert.ok(first.leafKey.equals(agentKey.publicKey))
})

test('a cached chain is refused once a certificate of it has expired or before it is valid', () => {
  const c = new AgentChainCache()
  c.validate([leafA], td, bundleA, now)
  assert.throws(() => c.validate([leafA], td, bundleA, h(11).getTime()), /expired/)
  assert.throws(() => c.validate([leafA], td, bundleA, t0 - 1000), /not valid yet/)
  assert.equal(c.misses, 1, 'refused from the cached validity window, not re-validated')
})

test('a change of the bundle is a miss: a chain of a CA no longer trusted is refused', () => {
  const c = new AgentChainCache()
  c.validate([leafA], td, bundleA, now)
  assert.throws(() => c.validate([leafA], td, new X509Bundle(td, [caB.der]), now), /no path/)
  // Adding an authority is a change too (re-validated, still good).
  c.validate([leafA], td, new X509Bundle(td, [caB.der, caA.der]), now)
  assert.equal(c.misses, 3)
})

test('another trust domain, a tampered chain and failures are never served from the cache', async () => {
  const c = new AgentChainCache()
  c.validate([leafA], td, bundleA, now)
  assert.throws(
    () => c.validate([leafA], TrustDomain.parse('other.org'), bundleA, now),
    /no X.509 bundle/,
  )
  const tampered = new Uint8Array(leafA)
  tampered[tampered.length - 5]! ^= 0x01 // inside the signature
  assert.throws(() => c.validate([tampered], td, bundleA, now))
  assert.throws(() => c.validate([tampered], td, bundleA, now))
  const leafB = await leafOf(caB)
  assert.throws(() => c.validate([leafB], td, bundleA, now), /no path/)
  assert.throws(() => c.validate([leafB], td, bundleA, now), /no path/)
  assert.equal(c.size, 1, 'only the good chain is held')
})

test('the cache is bounded in bytes, least recently used dropped first', async () => {
  const leaves = [leafA]
  for (let i = 0; i < 5; i++) leaves.push(await leafOf(caA, h(10 + i)))
  // Random serials make leaves differ in length by a byte or two: room for exactly three.
  const c = new AgentChainCache(3 * (Math.max(...leaves.map((l) => l.length)) + 512))
  for (const l of leaves) c.validate([l], td, bundleA, now)
  assert.equal(c.size, 3)
  const misses = c.misses
  c.validate([leaves[5]!], td, bundleA, now)
  assert.equal(c.misses, misses, 'the newest is still held')
  c.validate([leaves[0]!], td, bundleA, now)
  assert.equal(c.misses, misses + 1, 'the oldest was dropped')
})

test('a chain longer than an SVID chain can be is refused before any certificate of it is parsed', () => {
  // Anyone may call the node API with any chain (up to the 1 MiB message): 1,500 certificates
  // that each name the next as issuer cost seconds of parsing and signature checks per request.
  const leafB = leafOfB
  const chain = [leafB, ...Array.from({ length: 1500 }, () => caB.der)]
  const c = new AgentChainCache()
  const t = process.hrtime.bigint()
  assert.throws(() => c.validate(chain, td, bundleA, now), /more than 16 certificates/)
  const ms = Number(process.hrtime.bigint() - t) / 1e6
  assert.ok(ms < 200, `refused in ${ms.toFixed(1)} ms`)
  // A chain within the bound still gets the full validation (and its refusal).
  assert.throws(() => c.validate([leafB, caB.der], td, bundleA, now), /no path/)
})
