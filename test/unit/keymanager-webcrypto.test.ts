import assert from 'node:assert/strict'
import { type webcrypto, X509Certificate } from 'node:crypto'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { KEY_TYPES, webCryptoAlgorithm } from '../../src/keymanager/types.js'
import { signerCrypto, signerCryptoKey } from '../../src/spiffe/webcrypto.js'

type X509Crypto = Parameters<typeof x509.X509CertificateGenerator.create>[1]
type CreateParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
type SigningKey = Extract<CreateParams, { signingKey: unknown }>['signingKey']

const km = new MemoryKeyManager()

for (const type of KEY_TYPES) {
  test(`x509 signs a certificate and a CSR through a ${type} Signer`, async () => {
    const key = await km.generateKey(`wc-${type}`, type)
    const crypto = signerCrypto(key) as unknown as X509Crypto
    const signingKey = signerCryptoKey(key) as unknown as SigningKey
    const spki = new Uint8Array(key.publicKey.export({ type: 'spki', format: 'der' }))
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: '01',
        subject: 'CN=through-signer',
        issuer: 'CN=through-signer',
        notBefore: new Date('2026-01-01T00:00:00Z'),
        notAfter: new Date('2027-01-01T00:00:00Z'),
        publicKey: spki,
        signingKey,
        signingAlgorithm: webCryptoAlgorithm(type),
      },
      crypto,
    )
    const der = new Uint8Array(cert.rawData)
    // node:crypto (OpenSSL) is the independent verifier here.
    assert.ok(new X509Certificate(der).verify(key.publicKey))
    assert.ok(await cert.verify({ publicKey: cert.publicKey, signatureOnly: true }))
    const sigAlg = cert.signatureAlgorithm as { name: string; hash: { name: string } }
    assert.equal(sigAlg.name, webCryptoAlgorithm(type).name)
    assert.equal(sigAlg.hash.name, webCryptoAlgorithm(type).hash)
    const csr = await x509.Pkcs10CertificateRequestGenerator.create(
      {
        name: 'CN=csr',
        keys: {
          privateKey: signingKey,
          publicKey: await crypto!.subtle.importKey('spki', spki, webCryptoAlgorithm(type), true, [
            'verify',
          ]),
        },
        signingAlgorithm: webCryptoAlgorithm(type),
      },
      crypto,
    )
    assert.ok(await csr.verify(crypto))
  })
}

test('signing with a hash the Signer does not use is refused', async () => {
  const key = await km.generateKey('wc-mismatch', 'ec-p256')
  const crypto = signerCrypto(key)
  await assert.rejects(
    crypto.subtle.sign(
      { name: 'ECDSA', hash: 'SHA-384' },
      signerCryptoKey(key),
      new Uint8Array([1, 2, 3]),
    ),
    { code: 'ERR_KEY_MANAGER' },
  )
  await assert.rejects(
    crypto.subtle.sign('RSASSA-PKCS1-v1_5', signerCryptoKey(key), new Uint8Array([1])),
    { code: 'ERR_KEY_MANAGER' },
  )
})

test('everything but signer keys falls through to the platform WebCrypto', async () => {
  const key = await km.generateKey('wc-pass', 'ec-p256')
  const crypto = signerCrypto(key)
  const digest = await crypto.subtle.digest('SHA-256', new Uint8Array([1]))
  assert.equal(digest.byteLength, 32)
  assert.equal(crypto.getRandomValues(new Uint8Array(8)).length, 8)
  const pair = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair
  const alg = { name: 'ECDSA', hash: 'SHA-256' }
  const sig = await crypto.subtle.sign(alg, pair.privateKey, new Uint8Array([9]))
  assert.ok(await crypto.subtle.verify(alg, pair.publicKey, sig, new Uint8Array([9])))
})
