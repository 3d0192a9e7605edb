import assert from 'node:assert/strict'
import { createPublicKey } from 'node:crypto'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { readCert } from '../../src/spiffe/x509-cert.js'
import { issueX509Ca } from '../../src/spiffe/x509-svid.js'

const td = TrustDomain.parse('example.org')

// An x5c certificate whose EC point is off its curve: OpenSSL (and Go's x509, so go-spiffe
// workloads) cannot use that key. The old bundle parser refused it (JWK import and the
// certificate's publicKey both fail); the SPKI-bytes comparison must not let it in.
test('a bundle x509-svid key whose certificate EC point is off the curve is refused', async () => {
  const km = new MemoryKeyManager()
  const key = await km.generateKey('root', 'ec-p256')
  const der = await issueX509Ca({
    subjectPublicKey: key.publicKey,
    trustDomain: td,
    selfSigner: key,
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2027-01-01T00:00:00Z'),
  })
  const point = readCert(der).subjectPublicKey
  assert.equal(point.length, 65)
  const at = Buffer.from(der).indexOf(Buffer.from(point))
  assert.ok(at > 0)
  const bad = new Uint8Array(der)
  bad[at + 64] = bad[at + 64]! ^ 0x01 // last octet of y: off the curve
  const x = Buffer.from(bad.subarray(at + 1, at + 33)).toString('base64url')
  const y = Buffer.from(bad.subarray(at + 33, at + 65)).toString('base64url')
  const jwk = { kty: 'EC', crv: 'P-256', x, y }
  assert.throws(() => createPublicKey({ key: jwk, format: 'jwk' })) // OpenSSL: not a key
  const doc = JSON.stringify({
    keys: [{ use: 'x509-svid', ...jwk, x5c: [Buffer.from(bad).toString('base64')] }],
    spiffe_sequence: 1,
  })
  assert.throws(() => TrustBundle.fromSpiffeJson(td, doc), /x5c|curve|key/)
})
