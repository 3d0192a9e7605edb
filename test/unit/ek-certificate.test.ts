import assert from 'node:assert/strict'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { describeCertificate, extractDerCertificate } from '../../src/tpm/ek.js'

async function selfSigned(): Promise<Uint8Array> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const keys = await crypto.subtle.generateKey(alg, false, ['sign', 'verify'])
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=test-ek',
    notBefore: new Date('2026-01-01'),
    notAfter: new Date('2036-01-01'),
    signingAlgorithm: alg,
    keys,
  })
  return new Uint8Array(cert.rawData)
}

test('a plain DER certificate is returned as is', async () => {
  const der = await selfSigned()
  assert.deepEqual(extractDerCertificate(der), der)
})

test('trailing NV padding is cut at the DER length', async () => {
  const der = await selfSigned()
  const nv = new Uint8Array(der.length + 200).fill(0xff)
  nv.set(der)
  assert.deepEqual(extractDerCertificate(nv), der)
})

test('the 0x10 0x01 0x00 <len> NV header some TPMs add is removed', async () => {
  const der = await selfSigned()
  const nv = Uint8Array.from([0x10, 0x01, 0x00, der.length >> 8, der.length & 0xff, ...der, 0, 0])
  assert.deepEqual(extractDerCertificate(nv), der)
})

test('non-DER, truncated and unparseable certificates are ERR_EK_CERTIFICATE', async () => {
  const der = await selfSigned()
  for (const [name, bytes] of [
    ['empty NV', new Uint8Array()],
    ['not a SEQUENCE', Uint8Array.from([0x04, 0x02, 0x00, 0x00])],
    ['truncated', der.subarray(0, der.length - 10)],
    ['bad length encoding', Uint8Array.from([0x30, 0x85, 1, 2, 3, 4, 5])],
  ] as const) {
    assert.throws(() => extractDerCertificate(bytes), { code: 'ERR_EK_CERTIFICATE' }, name)
  }
  assert.throws(() => describeCertificate(Uint8Array.from([0x30, 0x03, 0x02, 0x01, 0x01])), {
    code: 'ERR_EK_CERTIFICATE',
  })
})

test('describeCertificate reports subject, issuer and the SPKI hash', async () => {
  const info = describeCertificate(await selfSigned())
  assert.equal(info.subject, 'CN=test-ek')
  assert.equal(info.issuer, 'CN=test-ek')
  assert.match(info.publicKeySha256, /^[0-9a-f]{64}$/)
})
