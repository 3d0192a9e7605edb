/**
 * issueX509Svids (src/spiffe/x509-leaf.ts): a batch of leaves signed with one signMany call where
 * the signer has it; per-leaf errors stay per leaf; a bad signature batch fails as a whole.
 */
import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Signer } from '../../src/keymanager/types.js'
import { X509Bundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svids, validateX509Svid } from '../../src/spiffe/x509-svid.js'

const td = TrustDomain.parse('example.org')
const t0 = new Date('2026-06-01T00:00:00Z')
const hours = (h: number) => new Date(t0.getTime() + h * 3600_000)
const km = new MemoryKeyManager()
const caKey = await km.generateKey('ca', 'ec-p256')
const caDer = await issueX509Ca({
  subjectPublicKey: caKey.publicKey,
  trustDomain: td,
  selfSigner: caKey,
  notBefore: t0,
  notAfter: hours(48),
})
const bundles = (t: TrustDomain) => (t.equals(td) ? new X509Bundle(td, [caDer]) : undefined)
const keys = await Promise.all(
  Array.from({ length: 5 }, (_, i) =>
    km.generateKey(`leaf-${i}`, i === 4 ? 'rsa-2048' : 'ec-p256'),
  ),
)
const a = SpiffeId.parse('spiffe://example.org/a')
const b = SpiffeId.parse('spiffe://example.org/b')

/** The CA key as a Signer with signMany, counting its calls; `tamper` changes the answer. */
function batchSigner(tamper?: (sigs: Uint8Array[]) => Uint8Array[] | Promise<Uint8Array[]>) {
  const s = {
    calls: 0,
    sizes: [] as number[],
    keyType: caKey.keyType,
    publicKey: caKey.publicKey,
    sign: (d: Uint8Array) => caKey.sign(d),
    async signMany(data: readonly Uint8Array[]) {
      s.calls++
      s.sizes.push(data.length)
      const sigs = await Promise.all(data.map((d) => caKey.sign(d)))
      return tamper ? tamper(sigs) : sigs
    },
  }
  return s satisfies Signer
}

const leaf = (i: number, spiffeId: SpiffeId, dnsNames?: string[]) => ({
  subjectPublicKey: keys[i]!.publicKey,
  spiffeId,
  notBefore: t0,
  notAfter: hours(2),
  ...(dnsNames ? { dnsNames } : {}),
})

test('issueX509Svids: one signMany call for the batch, leaves in request order with their own key and ID; a leaf that cannot be built is its own Error', async () => {
  const signer = batchSigner()
  const out = await issueX509Svids({ certificate: caDer, signer }, [
    leaf(0, a),
    leaf(1, b, ['api.example.org']),
    leaf(2, a, ['not a dns name']),
    leaf(3, a),
    leaf(4, b),
  ])
  assert.equal(signer.calls, 1)
  assert.deepEqual(signer.sizes, [4], 'the leaf that could not be built is not signed')
  assert.ok(out[2] instanceof Error)
  assert.match(out[2].message, /invalid DNS name/)
  const want = [a, b, undefined, a, b]
  for (const i of [0, 1, 3, 4]) {
    const der = out[i]
    assert.ok(der instanceof Uint8Array, `leaf ${i} issued`)
    const v = validateX509Svid([der], bundles, hours(1))
    assert.ok(v.spiffeId.equals(want[i]!), `leaf ${i} carries its own SPIFFE ID`)
    const cert = new X509Certificate(der)
    const got = cert.publicKey.export({ type: 'spki', format: 'der' })
    assert.ok(got.equals(keys[i]!.publicKey.export({ type: 'spki', format: 'der' })), `key ${i}`)
    // The per-entry template never leaks between entries: only leaf 1 has a DNS name and CN.
    assert.equal(cert.subject.includes('CN=api.example.org'), i === 1)
    assert.equal((cert.subjectAltName ?? '').includes('DNS:api.example.org'), i === 1)
  }
  const serials = [0, 1, 3, 4].map((i) => new X509Certificate(out[i] as Uint8Array).serialNumber)
  assert.equal(new Set(serials).size, 4, 'random serials, one each')
})

test('issueX509Svids: a failed or short signMany fails the whole batch; a signer returning garbage is caught on its first leaf', async () => {
  const leaves = [leaf(0, a), leaf(1, a), leaf(3, b)]
  await assert.rejects(
    issueX509Svids({ certificate: caDer, signer: batchSigner((s) => s.slice(1)) }, leaves),
    /the signer returned 2 signatures for 3 leaves/,
  )
  await assert.rejects(
    issueX509Svids(
      {
        certificate: caDer,
        signer: batchSigner(() => Promise.reject(new Error('token gone'))),
      },
      leaves,
    ),
    /token gone/,
  )
  await assert.rejects(
    issueX509Svids(
      { certificate: caDer, signer: batchSigner((s) => s.map(() => new Uint8Array(64).fill(1))) },
      leaves,
    ),
    /does not verify/,
  )
  // Without signMany the same batch is signed one by one.
  const plain: Signer = {
    keyType: caKey.keyType,
    publicKey: caKey.publicKey,
    sign: (d) => caKey.sign(d),
  }
  const out = await issueX509Svids({ certificate: caDer, signer: plain }, leaves)
  for (const der of out) assert.ok(validateX509Svid([der as Uint8Array], bundles, hours(1)))
})

test('issueX509Svids: a DNS name that is two cached names joined by a newline is refused, not served the cached template', async () => {
  const signer = batchSigner()
  const ok = await issueX509Svids({ certificate: caDer, signer }, [
    leaf(0, a, ['one.example.org', 'two.example.org']),
  ])
  assert.ok(ok[0] instanceof Uint8Array)
  const out = await issueX509Svids({ certificate: caDer, signer }, [
    leaf(1, a, ['one.example.org\ntwo.example.org']),
  ])
  assert.ok(out[0] instanceof Error, 'the joined name is not a DNS name')
  assert.match(out[0].message, /invalid DNS name/)
})
