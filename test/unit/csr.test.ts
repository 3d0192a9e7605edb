import assert from 'node:assert/strict'
import { generateKeyPairSync, sign } from 'node:crypto'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { createCsr, publicKeyFromCsr } from '../../src/spiffe/csr.js'
import type { KeyType, Signer } from '../../src/spiffe/signer.js'

function softSigner(keyType: KeyType): Signer {
  const { privateKey, publicKey } =
    keyType === 'rsa-2048'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: keyType === 'ec-p384' ? 'P-384' : 'P-256' })
  const hash = keyType === 'ec-p384' ? 'sha384' : 'sha256'
  return {
    keyType,
    publicKey,
    sign: async (d) =>
      new Uint8Array(sign(hash, d, { key: privateKey, dsaEncoding: 'ieee-p1363' })),
  }
}

for (const keyType of ['ec-p256', 'ec-p384', 'rsa-2048'] as const) {
  test(`createCsr (${keyType}): a PKCS#10 CSR another parser verifies, naming the signer's key`, async () => {
    const s = softSigner(keyType)
    const der = await createCsr(s)
    // An independent reader (@peculiar/x509) parses it and checks its signature.
    const csr = new x509.Pkcs10CertificateRequest(der)
    assert.equal(await csr.verify(), true)
    assert.equal(csr.subject, 'O=spiffe-edge')
    const spki = s.publicKey.export({ type: 'spki', format: 'der' })
    assert.deepEqual(Buffer.from(csr.publicKey.rawData), spki)
    // The server's reader takes the same key from it.
    const key = await publicKeyFromCsr(der)
    assert.deepEqual(key.export({ type: 'spki', format: 'der' }), spki)
  })
}

test('publicKeyFromCsr refuses a CSR whose signature is not by its key', async () => {
  const a = softSigner('ec-p256')
  const b = softSigner('ec-p256')
  const forged: Signer = { keyType: 'ec-p256', publicKey: a.publicKey, sign: b.sign }
  await assert.rejects(publicKeyFromCsr(await createCsr(forged)))
})
