import assert from 'node:assert/strict'
import { test } from 'node:test'
import { BundleState } from '../../src/agent/cache/bundle.js'
import type { BundlesUpdate } from '../../src/agent/workload-api/types.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca } from '../../src/spiffe/x509-svid.js'

const km = new MemoryKeyManager()

async function bundleOf(name: string, sequence: number): Promise<string> {
  const td = TrustDomain.parse(name)
  const caKey = await km.generateKey(`ca-${name}`, 'ec-p256')
  const now = Date.now()
  const der = await issueX509Ca({
    subjectPublicKey: caKey.publicKey,
    trustDomain: td,
    selfSigner: caKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3600_000),
  })
  return new TrustBundle({ trustDomain: td, x509Authorities: [der], sequence }).toSpiffeJson()
}

test('agent federated bundles: adopted per domain, our own domain and bad ones refused (old kept), dropped when no longer sent', async () => {
  const s = new BundleState(TrustDomain.parse('one.test'))
  let last: BundlesUpdate | undefined
  s.subscribe((u) => {
    last = u
  })
  const two = await bundleOf('two.test', 1)
  const bad: string[] = []
  const onBad = (td: string) => bad.push(td)
  assert.equal(s.adoptFederated([{ trustDomain: 'two.test', bundle: two }], onBad), true)
  s.notify()
  assert.deepEqual([...last!.x509.keys()], ['two.test'])
  assert.equal(JSON.parse(last!.jwt.get('two.test')!).keys.length, 0)
  // Same again: no change.
  assert.equal(s.adoptFederated([{ trustDomain: 'two.test', bundle: two }], onBad), false)
  // Garbage for two.test keeps the old one; our own domain sent as foreign is refused.
  const own = await bundleOf('one.test', 1)
  assert.equal(
    s.adoptFederated(
      [
        { trustDomain: 'two.test', bundle: '{"keys":"no"}' },
        { trustDomain: 'one.test', bundle: own },
      ],
      onBad,
    ),
    false,
  )
  assert.deepEqual(bad, ['two.test', 'one.test'])
  assert.ok(s.federated.get('two.test'))
  assert.equal(s.federated.has('one.test'), false)
  assert.equal(s.jwtBundle(TrustDomain.parse('two.test'))?.trustDomain.name, 'two.test')
  // Not sent any more (no entry federates with it): dropped.
  assert.equal(s.adoptFederated([], onBad), true)
  assert.equal(s.jwtBundle(TrustDomain.parse('two.test')), undefined)
})
