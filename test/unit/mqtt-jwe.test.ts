/**
 * jwe.ts is JWE compact on node:crypto: it must stay RFC 7516/7518 JWE (checked against jose both
 * ways), keep refusing what jose refused, and stay off WebCrypto's async jobs (the reason it
 * exists: 1.5-1.8 ms of CPU per JWE through jose 6 on the MQTT attestation path).
 */
import assert from 'node:assert/strict'
import { createPublicKey, generateKeyPairSync, webcrypto } from 'node:crypto'
import test from 'node:test'
import { CompactEncrypt, compactDecrypt, importJWK } from 'jose'
import { decryptBound, decryptWith, encryptTo, newEcdhKey } from '../../src/transport/mqtt/jwe.js'

const enc = (s: string) => new TextEncoder().encode(s)

test('JWE: what encryptTo makes, jose opens (and sees the bound header)', async () => {
  const k = await newEcdhKey()
  const jwe = await encryptTo(k.publicJwk, enc('join-token-secret'), { spe_nonce: 'n1' })
  const r = await compactDecrypt(jwe, k.privateKey, {
    keyManagementAlgorithms: ['ECDH-ES+A256KW'],
    contentEncryptionAlgorithms: ['A256GCM'],
  })
  assert.equal(Buffer.from(r.plaintext).toString(), 'join-token-secret')
  assert.equal(r.protectedHeader.spe_nonce, 'n1')
  assert.equal(r.protectedHeader.kid, k.kid)
})

test('JWE: what jose makes, decryptBound opens; the kid is the RFC 7638 thumbprint', async () => {
  const k = await newEcdhKey()
  const jwk = JSON.parse(k.publicJwk) as { x: string; y: string; kid: string }
  const { calculateJwkThumbprint } = await import('jose')
  assert.equal(
    jwk.kid,
    await calculateJwkThumbprint({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y }),
  )
  const pub = await importJWK({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y }, 'ECDH-ES+A256KW')
  const big = new Uint8Array(100_000).fill(7)
  const jwe = await new CompactEncrypt(big)
    .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', spe_rk: 'rk' })
    .encrypt(pub)
  const d = await decryptBound(k.privateKey, jwe)
  assert.deepEqual(Buffer.from(d.plaintext), Buffer.from(big))
  assert.equal(d.bound.spe_rk, 'rk')
})

test('JWE: refuses other algorithms, an ephemeral key off the curve, cut tags and altered parts', async () => {
  const k = await newEcdhKey()
  const jwk = JSON.parse(k.publicJwk) as { x: string; y: string }
  const pub = await importJWK({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y }, 'ECDH-ES')
  // Direct key agreement (no wrap) is another algorithm: refused.
  const direct = await new CompactEncrypt(enc('s'))
    .setProtectedHeader({ alg: 'ECDH-ES', enc: 'A256GCM' })
    .encrypt(pub)
  await assert.rejects(decryptWith(k.privateKey, direct), { code: 'ERR_MQTT_ENCRYPTION' })
  const jwe = await encryptTo(k.publicJwk, enc('secret'))
  const parts = jwe.split('.')
  const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString()) as {
    epk: { x: string; y: string }
  }
  // An invalid-curve point: y changed, so (x, y) is not on P-256.
  const y = Buffer.from(header.epk.y, 'base64url')
  y[31]! ^= 1
  const offCurve = { ...header, epk: { ...header.epk, y: y.toString('base64url') } }
  const withHeader = (h: unknown) =>
    [Buffer.from(JSON.stringify(h)).toString('base64url'), ...parts.slice(1)].join('.')
  await assert.rejects(decryptWith(k.privateKey, withHeader(offCurve)), (e: Error) => {
    assert.equal((e as { code?: string }).code, 'ERR_MQTT_ENCRYPTION')
    return true
  })
  for (const extra of [{ zip: 'DEF' }, { crit: ['x'], x: 1 }, { enc: 'A128GCM' }])
    await assert.rejects(decryptWith(k.privateKey, withHeader({ ...header, ...extra })), {
      code: 'ERR_MQTT_ENCRYPTION',
    })
  const swap = (i: number, v: string) => parts.map((p, j) => (j === i ? v : p)).join('.')
  const tag = Buffer.from(parts[4]!, 'base64url')
  for (const bad of [
    swap(4, tag.subarray(0, 8).toString('base64url')), // a cut tag
    swap(4, Buffer.from(tag.map((b, i) => (i === 0 ? b ^ 1 : b))).toString('base64url')),
    swap(3, `${parts[3]!.slice(0, -2)}AA`), // altered ciphertext
    swap(1, Buffer.alloc(40, 1).toString('base64url')), // another wrapped key
    swap(2, Buffer.alloc(12).toString('base64url')), // another IV
    swap(3, `${parts[3]}*`), // not base64url
    parts.slice(0, 4).join('.'),
  ])
    await assert.rejects(decryptWith(k.privateKey, bad), { code: 'ERR_MQTT_ENCRYPTION' })
  // Only EC P-256 private keys decrypt.
  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey
  await assert.rejects(decryptWith(p384, jwe), { code: 'ERR_MQTT_ENCRYPTION' })
  // A recipient whose point is off the curve is refused before anything is encrypted.
  const ry = Buffer.from(jwk.y, 'base64url')
  ry[31]! ^= 1
  await assert.rejects(
    encryptTo(
      JSON.stringify({ kty: 'EC', crv: 'P-256', x: jwk.x, y: ry.toString('base64url') }),
      enc('s'),
    ),
    { code: 'ERR_MQTT_ENCRYPTION' },
  )
  assert.equal(createPublicKey(k.privateKey).asymmetricKeyDetails?.namedCurve, 'prime256v1')
})

test('JWE: encryptTo and decryptBound run no WebCrypto operation', async () => {
  // jose 6 did every step in WebCrypto (async jobs, ~4x the CPU); this is the regression guard.
  const subtle = webcrypto.subtle as unknown as Record<string, unknown>
  const names = [
    'generateKey',
    'deriveBits',
    'deriveKey',
    'importKey',
    'exportKey',
    'encrypt',
    'decrypt',
    'wrapKey',
    'unwrapKey',
    'digest',
  ]
  const saved = names.map((n) => subtle[n])
  let used = 0
  for (const n of names)
    subtle[n] = (...a: unknown[]) => {
      used++
      return (saved[names.indexOf(n)] as (...x: unknown[]) => unknown).apply(webcrypto.subtle, a)
    }
  try {
    const k = await newEcdhKey()
    const jwe = await encryptTo(k.publicJwk, enc('s'), { spe_nonce: 'n' })
    await decryptBound(k.privateKey, jwe)
  } finally {
    names.forEach((n, i) => {
      subtle[n] = saved[i]
    })
  }
  assert.equal(used, 0)
})
