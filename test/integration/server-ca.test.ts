import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { CaManager } from '../../src/server/ca.js'
import { openMemoryDatastore } from '../../src/server/datastore/sqlite.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'

const td = TrustDomain.parse('example.org')
const HOUR = 3600_000

async function fixture(caTtlSeconds = 24 * 3600) {
  let now = Date.parse('2026-11-23T00:00:00Z')
  const clock = { now: () => new Date(now) }
  const datastore = await openMemoryDatastore()
  const keyManager = new MemoryKeyManager()
  const ca = await CaManager.open({
    trustDomain: td,
    keyManager,
    datastore,
    keyType: 'ec-p256',
    caTtlSeconds,
    clock,
  })
  const advance = async (ms: number) => {
    now += ms
    await ca.rotate()
  }
  return { ca, datastore, keyManager, advance, clock }
}

const leafKey = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey
const issuerOf = (der: Uint8Array) => new x509.X509Certificate(der).issuer

test('a next CA is published in the bundle before it signs, and the old one stays until it expires', async () => {
  const { ca, advance } = await fixture()
  const first = ca.bundle()
  assert.equal(first.x509Authorities.length, 1)
  const seq1 = first.sequence
  const id = SpiffeId.parse('spiffe://example.org/w')
  const caName1 = new x509.X509Certificate(first.x509Authorities[0]!).subject

  await advance(13 * HOUR) // past half life: next prepared and published, not yet signing
  const b2 = ca.bundle()
  assert.equal(b2.x509Authorities.length, 2)
  assert.ok(b2.sequence > seq1, 'sequence increases on every bundle change')
  assert.ok(ca.slots().x509.next)
  const svid = await ca.signX509Svid({ publicKey: leafKey(), spiffeId: id, ttlSeconds: 3600 })
  assert.equal(issuerOf(svid.chain[0]!), caName1, 'still signed by the current CA')

  await advance(8 * HOUR) // past 5/6: the next CA signs now
  const svid2 = await ca.signX509Svid({ publicKey: leafKey(), spiffeId: id, ttlSeconds: 3600 })
  assert.notEqual(issuerOf(svid2.chain[0]!), caName1)
  assert.equal(ca.bundle().x509Authorities.length, 2, 'the old CA is kept while it is valid')

  await advance(4 * HOUR) // the first CA has expired: dropped from the bundle
  assert.ok(
    !ca.bundle().x509Authorities.some((c) => new x509.X509Certificate(c).subject === caName1),
  )
})

test('a short-lived CA: the next CA is published for a third of its life before it signs', async () => {
  // 60 s CA: the notBefore backdating (60 s) must not count toward rotation, or the next CA would
  // be prepared and activated in the same tick, before agents could fetch it.
  const { ca, advance } = await fixture(60)
  await advance(29_000)
  assert.equal(ca.slots().x509.next, undefined, 'not prepared before half life')
  await advance(2_000)
  assert.ok(ca.slots().x509.next, 'prepared past half life')
  const first = ca.slots().x509.current
  await advance(10_000) // 41 s: published, not yet signing
  assert.equal(ca.slots().x509.current, first)
  await advance(10_000) // 51 s: past 5/6
  assert.notEqual(ca.slots().x509.current, first)
})

test('an SVID never outlives the CA that signed it', async () => {
  const { ca, advance } = await fixture()
  await advance(20 * HOUR)
  const svid = await ca.signX509Svid({
    publicKey: leafKey(),
    spiffeId: SpiffeId.parse('spiffe://example.org/w'),
    ttlSeconds: 48 * 3600,
  })
  const caCert = new x509.X509Certificate(ca.caCertificates()[0]!)
  assert.ok(svid.notAfter.getTime() <= caCert.notAfter.getTime())
})

test('the CA journal survives a restart: same keys, same bundle, no sequence bump', async () => {
  const { ca, datastore, keyManager, clock } = await fixture()
  const before = ca.bundle()
  const again = await CaManager.open({
    trustDomain: td,
    keyManager,
    datastore,
    keyType: 'ec-p256',
    caTtlSeconds: 24 * 3600,
    clock,
  })
  assert.equal(again.bundle().sequence, before.sequence)
  assert.ok(again.bundle().equals(before))
  assert.deepEqual(again.slots(), ca.slots())
})
