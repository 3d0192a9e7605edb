import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { test } from 'node:test'
import type { PeerCertificate } from 'node:tls'
import { generateSoftwareKeyPair, softwareKey } from '../../../../src/keymanager/memory.js'
import { X509Bundle } from '../../../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../../../src/spiffe/x509-svid.js'
import { authorizeAny, authorizeID } from '../../src/authorize.js'
import { parseJwtBundle, parseX509Svid } from '../../src/svid.js'
import { PeerVerifier } from '../../src/verify.js'
import type { X509SvidSource } from '../../src/x509-source.js'
import { issue, testCa } from '../helpers/pki.js'

/** What node:tls hands checkServerIdentity: raw DER, fingerprint, issuer links. */
function peer(...ders: Uint8Array[]): PeerCertificate {
  let issuer: Record<string, unknown> | undefined
  for (const der of [...ders].reverse()) {
    const c = new X509Certificate(der)
    const o: Record<string, unknown> = { raw: c.raw, fingerprint256: c.fingerprint256 }
    o.issuerCertificate = issuer ?? o
    issuer = o
  }
  return issuer as unknown as PeerCertificate
}

function sourceOf(bundles: X509Bundle[]): X509SvidSource {
  const m = new Map(bundles.map((b) => [b.trustDomain.name, b]))
  return {
    getX509Svid: () => {
      throw new Error('unused')
    },
    getX509BundleForTrustDomain: (td) => m.get(td.name),
    x509Bundles: () => m,
    generation: 1,
    on: () => undefined,
    off: () => undefined,
  }
}

test('a peer verifies only against the bundle of its own trust domain', async () => {
  const a = await testCa('a.test')
  // A CA that claims a.test but is published as b.test's bundle (a federated domain gone rogue):
  // OpenSSL would accept chains to it, since it is in the trust store.
  const k = await generateSoftwareKeyPair('ec-p256')
  const rogueSigner = softwareKey('r', 'ec-p256', k.privateKey, k.publicKey)
  const now = Date.now()
  const rogue = await issueX509Ca({
    subjectPublicKey: k.publicKey,
    trustDomain: TrustDomain.parse('a.test'),
    selfSigner: rogueSigner,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3600_000),
  })
  const leafKey = await generateSoftwareKeyPair('ec-p256')
  const forged = await issueX509Svid({
    subjectPublicKey: leafKey.publicKey,
    spiffeId: SpiffeId.parse('spiffe://a.test/admin'),
    issuer: { certificate: rogue, signer: rogueSigner },
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 600_000),
  })
  const v = new PeerVerifier(
    sourceOf([
      new X509Bundle(a.td, [a.certificate]),
      new X509Bundle(TrustDomain.parse('b.test'), [rogue]),
    ]),
  )
  assert.throws(() => v.verify(peer(forged, rogue), authorizeAny()), {
    code: 'ERR_PEER_UNAUTHORIZED',
    message: /no path from the leaf to an authority of trust domain a\.test/,
  })
  const good = await issue(a, '/svc')
  assert.equal(String(v.verify(peer(good.chain, a.certificate), authorizeAny())), good.id)
  // Cached now; the authorizer still runs on every use.
  assert.throws(() => v.verify(peer(good.chain, a.certificate), authorizeID('spiffe://a.test/x')), {
    code: 'ERR_PEER_UNAUTHORIZED',
  })
  // And the cached validity window is re-checked.
  assert.throws(
    () => v.verify(peer(good.chain, a.certificate), authorizeAny(), now + 2 * 3600_000),
    {
      code: 'ERR_PEER_UNAUTHORIZED',
    },
  )
})

test('an SVID whose key does not match its leaf, or whose leaf names another ID, is refused', async () => {
  const a = await testCa('a.test')
  const one = await issue(a, '/one')
  const two = await issue(a, '/two')
  const msg = {
    spiffeId: one.id,
    x509Svid: one.chain,
    x509SvidKey: one.key,
    bundle: a.certificate,
    hint: '',
  }
  assert.equal(parseX509Svid(msg).id.toString(), one.id)
  assert.throws(() => parseX509Svid({ ...msg, x509SvidKey: two.key }), {
    code: 'ERR_WORKLOAD_PROTOCOL',
  })
  assert.throws(() => parseX509Svid({ ...msg, spiffeId: two.id }), {
    code: 'ERR_WORKLOAD_PROTOCOL',
  })
})

test('JWT bundles: jwt-svid keys kept, x509 keys skipped, oversized documents refused', async () => {
  const a = await testCa('a.test')
  const b = parseJwtBundle(a.td, new TextEncoder().encode(a.bundle().toSpiffeJson()))
  assert.deepEqual([...b.authorities.keys()], [a.jwtKid])
  assert.throws(() => parseJwtBundle(a.td, new Uint8Array((1 << 20) + 1)), {
    code: 'ERR_WORKLOAD_PROTOCOL',
  })
  const many = JSON.stringify({ keys: Array.from({ length: 1001 }, () => ({})) })
  assert.throws(() => parseJwtBundle(a.td, new TextEncoder().encode(many)), {
    code: 'ERR_WORKLOAD_PROTOCOL',
  })
})
