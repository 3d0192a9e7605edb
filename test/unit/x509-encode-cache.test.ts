import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { WorkloadX509Svid, X509Update } from '../../src/agent/workload-api/types.js'
import { X509EncodeCache } from '../../src/agent/workload-api/x509-encode-cache.js'

const svid = (id: string, byte: number): WorkloadX509Svid => ({
  spiffeId: `spiffe://example.org/${id}`,
  chain: [Uint8Array.of(byte)],
  privateKey: Uint8Array.of(byte, byte),
  hint: '',
  entryId: id,
})

test('encoded X509SVIDResponse: reused only for the very same SVID and bundle objects', () => {
  const cache = new X509EncodeCache()
  let encodes = 0
  const encode = (u: X509Update) => {
    encodes++
    return Uint8Array.from(u.svids.flatMap((s) => [...s.chain[0]!]))
  }
  const a = svid('a', 1)
  const b = svid('b', 2)
  const authorities = [Uint8Array.of(9)]
  const u1: X509Update = { svids: [a], bundles: new Map([['example.org', authorities]]) }
  const first = cache.get(u1, encode)
  // A new update object (each subscriber gets its own) with the same SVID and bundle objects.
  const again = cache.get({ svids: [a], bundles: new Map([['example.org', authorities]]) }, encode)
  assert.equal(again, first)
  assert.equal(encodes, 1)

  // A rotated SVID (a new object, even with equal bytes), another set, a new bundle: encoded anew.
  const rotated = svid('a', 1)
  cache.get({ svids: [rotated], bundles: new Map([['example.org', authorities]]) }, encode)
  assert.equal(encodes, 2)
  assert.deepEqual(
    cache.get({ svids: [a, b], bundles: new Map([['example.org', authorities]]) }, encode),
    Uint8Array.of(1, 2),
  )
  assert.equal(encodes, 3)
  cache.get({ svids: [a], bundles: new Map([['example.org', [Uint8Array.of(9)]]]) }, encode)
  cache.get({ svids: [a], bundles: new Map([['other.org', authorities]]) }, encode)
  assert.equal(encodes, 5)
  // "No usable SVID" is cached as such too.
  assert.equal(
    cache.get({ svids: [b], bundles: new Map() }, () => undefined),
    undefined,
  )
})
