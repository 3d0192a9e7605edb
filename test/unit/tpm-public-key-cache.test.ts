import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { sameKey } from '../../src/attestors/tpm/server.js'
import {
  type EccPublic,
  publicKeyCacheStats,
  publicKeyObject,
  publicKeySpki,
} from '../../src/tpm/structures/public.js'

const none = new Uint8Array(0)
function ecc(x: Uint8Array, y: Uint8Array): EccPublic {
  return {
    type: 'ecc',
    nameAlg: 0x000b,
    objectAttributes: 0,
    authPolicy: none,
    symmetric: { algorithm: 0x0010 },
    scheme: { scheme: 0x0010 },
    curveId: 0x0003,
    kdf: { scheme: 0x0010 },
    x,
    y,
    // Hand-built areas have no raw bytes: the cache must not key on them.
    raw: none,
  } as EccPublic
}
function fresh(): { pub: EccPublic; jwk: { x?: string; y?: string } } {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = publicKey.export({ format: 'jwk' })
  const b = (s?: string) => new Uint8Array(Buffer.from(s!, 'base64url'))
  return { pub: ecc(b(jwk.x), b(jwk.y)), jwk }
}

test('the key object cache answers by key content: two different keys never share an entry', () => {
  const a = fresh()
  const b = fresh()
  const ka = publicKeyObject(a.pub)
  const kb = publicKeyObject(b.pub)
  assert.equal(ka.export({ format: 'jwk' }).x, a.jwk.x)
  assert.equal(kb.export({ format: 'jwk' }).x, b.jwk.x)
  assert.ok(!sameKey(ka, kb))
  // A re-parsed copy of the same key (a new object) is served from the cache.
  const again = publicKeyObject(ecc(new Uint8Array(a.pub.x), new Uint8Array(a.pub.y)))
  assert.equal(again, ka)
  assert.ok(publicKeyCacheStats().entries >= 2)
})

test('a point off the curve is refused every time (failures are not cached)', () => {
  const { pub } = fresh()
  const bad = ecc(
    pub.x,
    new Uint8Array(pub.y).map((v, i) => (i === 31 ? v ^ 1 : v)),
  )
  assert.throws(() => publicKeyObject(bad), /not a valid public key/)
  assert.throws(
    () => publicKeyObject(ecc(new Uint8Array(bad.x), new Uint8Array(bad.y))),
    /not a valid public key/,
  )
})

test('publicKeySpki hands out copies of the cached SPKI', () => {
  const { pub } = fresh()
  const s1 = publicKeySpki(pub)
  s1.fill(0)
  assert.notDeepEqual(publicKeySpki(pub), s1)
})
