/**
 * One byte string, one certificate: node:crypto's X509Certificate tries PEM before DER, so a
 * certificate whose signature field carries the PEM of the trust domain's own root was read by
 * OpenSSL as that root (self-signed: it verifies) while the DER reader took the attacker's TBS (any
 * SPIFFE ID, validity and key). Found in review, 2026-12-02; every such input must be refused.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { certificateToPem, TrustBundle, X509Bundle } from '../../src/spiffe/bundle.js'
import * as der from '../../src/spiffe/der.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { nodeCertFromDer } from '../../src/spiffe/x509-cert.js'
import { issueX509Ca, issueX509Svid, validateX509Svid } from '../../src/spiffe/x509-svid.js'

const td = TrustDomain.parse('example.org')
const t0 = new Date(Date.now() - 3600e3)
const t1 = new Date(Date.now() + 3600e3)

async function forge() {
  const km = new MemoryKeyManager()
  const caKey = await km.generateKey('ca', 'ec-p256')
  const caDer = await issueX509Ca({
    subjectPublicKey: caKey.publicKey,
    trustDomain: td,
    selfSigner: caKey,
    notBefore: t0,
    notAfter: t1,
  })
  // The attacker's own CA and key; only the victim's public root certificate is used.
  const evil = await km.generateKey('evil', 'ec-p256')
  const evilCa = await issueX509Ca({
    subjectPublicKey: evil.publicKey,
    trustDomain: td,
    selfSigner: evil,
    notBefore: t0,
    notAfter: new Date('2049-01-01'),
  })
  const mine = await km.generateKey('mine', 'ec-p256')
  const leaf = await issueX509Svid({
    subjectPublicKey: mine.publicKey,
    spiffeId: SpiffeId.parse('spiffe://example.org/spire/server'),
    issuer: { certificate: evilCa, signer: evil },
    notBefore: t0,
    notAfter: new Date('2049-01-01'),
  })
  const outer = der.readTlv(leaf, 0, 'leaf')
  const [tbs, alg] = der.children(outer.value, 'leaf')
  const smuggled = der.seq(
    tbs!.raw,
    alg!.raw,
    der.bits(Buffer.from(`\n${certificateToPem(caDer)}\n`)),
  )
  return { caDer, smuggled }
}

test('a certificate carrying a PEM block is not validated as the SVID its DER names', async () => {
  const { caDer, smuggled } = await forge()
  assert.throws(
    () => validateX509Svid([smuggled], () => new X509Bundle(td, [caDer]), new Date()),
    /not a DER X.509 certificate/,
  )
})

test('nodeCertFromDer refuses bytes OpenSSL reads as another certificate, keeps real DER', async () => {
  const { caDer, smuggled } = await forge()
  assert.throws(() => nodeCertFromDer(smuggled), /OpenSSL read another/)
  assert.equal(Buffer.from(nodeCertFromDer(caDer).raw).equals(Buffer.from(caDer)), true)
})

test('a SPIFFE bundle whose x5c smuggles a PEM block is refused', async () => {
  const { caDer, smuggled } = await forge()
  const good = JSON.parse(
    new TrustBundle({ trustDomain: td, x509Authorities: [caDer] }).toSpiffeJson(),
  ) as {
    keys: { x5c: string[] }[]
  }
  good.keys[0]!.x5c = [Buffer.from(smuggled).toString('base64')]
  assert.throws(() => TrustBundle.fromSpiffeJson(td, JSON.stringify(good)))
})

test('the DER reader refuses high tag numbers and non-minimal lengths', () => {
  // [6] IMPLICIT as a high-tag-number form: OpenSSL reads it as tag 6, a naive reader as 0x9f.
  assert.throws(() => der.readTlv(Uint8Array.of(0x9f, 0x06, 0x01, 0x41), 0, 't'), /malformed DER/)
  // Length 1 spelled in the long form, and with a leading zero octet.
  assert.throws(() => der.readTlv(Uint8Array.of(0x04, 0x81, 0x01, 0x41), 0, 't'), /malformed DER/)
  assert.throws(
    () => der.readTlv(Uint8Array.of(0x04, 0x82, 0x00, 0x81, ...new Uint8Array(0x81)), 0, 't'),
    /malformed DER/,
  )
  assert.equal(
    der.readTlv(Uint8Array.of(0x04, 0x81, 0x80, ...new Uint8Array(0x80)), 0, 't').value.length,
    0x80,
  )
})
