import assert from 'node:assert/strict'
import type { webcrypto } from 'node:crypto'
import { test } from 'node:test'
import { EkChainCache } from '../../src/attestors/tpm/ek-chain-cache.js'
import { parseCert } from '../../src/attestors/tpm/ekcert.js'
import { x509 } from '../../src/common/x509.js'

const ecAlg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const
const TPM_SAN = '2.23.133.2.1=id:49465800, 2.23.133.2.2=SLB9670, 2.23.133.2.3=id:0007003D'
const now = new Date('2027-06-01')

interface Ca {
  readonly name: string
  readonly keys: webcrypto.CryptoKeyPair
  readonly der: Uint8Array
}

async function ca(name: string, issuer?: Ca): Promise<Ca> {
  const keys = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: name,
    issuer: issuer?.name ?? name,
    notBefore: new Date('2026-01-01'),
    notAfter: new Date('2046-01-01'),
    signingAlgorithm: ecAlg,
    publicKey: keys.publicKey,
    signingKey: (issuer?.keys ?? keys).privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  })
  return { name, keys, der: new Uint8Array(cert.rawData) }
}

async function ekCert(issuer: Ca, notAfter = new Date('2046-01-01')): Promise<Uint8Array> {
  const ek = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: '',
    issuer: issuer.name,
    notBefore: new Date('2026-01-01'),
    notAfter,
    signingAlgorithm: ecAlg,
    publicKey: ek.publicKey,
    signingKey: issuer.keys.privateKey,
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: 'dn', value: TPM_SAN }], true),
      new x509.ExtendedKeyUsageExtension(['2.23.133.8.1']),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
      new x509.BasicConstraintsExtension(false, undefined, true),
    ],
  })
  return new Uint8Array(cert.rawData)
}

test('EK chain cache: a verified chain is reused, with the same facts, only for the same bytes', async () => {
  const root = await ca('CN=Root')
  const mid = await ca('CN=Mid', root)
  const leaf = await ekCert(mid)
  const anchors = [parseCert(root.der, 'root')]
  const c = new EkChainCache()
  const first = c.check(leaf, [mid.der], anchors, now)
  assert.equal(first.kind, 'verified')
  const again = c.check(leaf, [mid.der], anchors, now)
  assert.deepEqual(again, first)
  assert.equal(c.verifications, 1, 'the second check is a cache hit')
  if (again.kind !== 'verified') throw new Error('unreachable')
  assert.equal(again.issuerSha256, parseCert(mid.der, 'mid').sha256)
  assert.deepEqual(again.attrs, {
    manufacturer: 'id:49465800',
    model: 'SLB9670',
    version: 'id:0007003D',
  })
  // Without the intermediate the same leaf does not chain: not served from the cache.
  assert.equal(c.check(leaf, [], anchors, now).kind, 'untrusted')
  // Failures are not cached; a hit needs `now` inside the path's validity.
  const expiring = await ekCert(mid, new Date('2028-01-01'))
  assert.equal(c.check(expiring, [mid.der], anchors, now).kind, 'verified')
  const late = c.check(expiring, [mid.der], anchors, new Date('2029-01-01'))
  assert.equal(late.kind, 'untrusted', 'expired since it was cached: verified again, refused')
  assert.equal(c.check(new Uint8Array([1, 2, 3]), [], anchors, now).kind, 'unparsable')
})

test('EK chain cache: a changed set of trusted EK CAs drops what the old set verified', async () => {
  const root = await ca('CN=Root')
  const other = await ca('CN=Other Root')
  const leaf = await ekCert(root)
  const c = new EkChainCache()
  const both = [parseCert(root.der, 'root'), parseCert(other.der, 'other')]
  assert.equal(c.check(leaf, [], both, now).kind, 'verified')
  // The manufacturer's root is removed from the bundle (reloaded: new Cert objects).
  const onlyOther = [parseCert(other.der, 'other')]
  assert.equal(c.check(leaf, [], onlyOther, now).kind, 'untrusted')
  assert.equal(c.stats().entries, 0)
  // The same set again, in another order and as new objects: still one set, cache kept.
  const again = [parseCert(other.der, 'other'), parseCert(root.der, 'root')]
  assert.equal(c.check(leaf, [], again, now).kind, 'verified')
  const n = c.verifications
  assert.equal(
    c.check(leaf, [], [parseCert(root.der, 'r'), parseCert(other.der, 'o')], now).kind,
    'verified',
  )
  assert.equal(c.verifications, n, 'same CA set: a hit')
})

test('EK chain cache: bounded in bytes, least recently used dropped first', async () => {
  const root = await ca('CN=Root')
  const anchors = [parseCert(root.der, 'root')]
  const leaves: Uint8Array[] = []
  for (let i = 0; i < 6; i++) leaves.push(await ekCert(root))
  const probe = new EkChainCache()
  probe.check(leaves[0]!, [], anchors, now)
  const one = probe.stats().bytes
  assert.ok(one > 0)
  // Room for three entries.
  const c = new EkChainCache(one * 3 + one / 2)
  for (const l of leaves) c.check(l, [], anchors, now)
  assert.equal(c.stats().entries, 3)
  assert.ok(c.stats().bytes <= c.stats().maxBytes)
  // The three newest are cached, the oldest were dropped.
  const n = c.verifications
  c.check(leaves[5]!, [], anchors, now)
  c.check(leaves[4]!, [], anchors, now)
  assert.equal(c.verifications, n)
  c.check(leaves[0]!, [], anchors, now)
  assert.equal(c.verifications, n + 1)
  assert.equal(c.stats().entries, 3)
})
