/**
 * The node client's TLS roots follow its bundle: the verifying channel trusts the X.509
 * authorities of the bundle it was made with, and a bundle with other authorities gives the next
 * call a new channel that trusts those (a CA rotation must never leave the agent pinned to its
 * bootstrap roots). Two real servers, each with its own CA: the one client is pointed at server A
 * while trusting B's bundle, then A's, then B's again.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { startTestServer, type TestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

async function publishedBundle(s: TestServer): Promise<TrustBundle> {
  const r = await s.admin('GET', '/v1/bundle?format=spiffe')
  return TrustBundle.fromSpiffeJson(td, String(r.bundle))
}

test('a new bundle replaces the TLS roots for the next call, both ways', async () => {
  await using a = await startTestServer()
  await using b = await startTestServer()
  const bundleA = await publishedBundle(a)
  const bundleB = await publishedBundle(b)
  assert.notEqual(bundleA.toPem(), bundleB.toPem(), 'each server has its own CA')

  const client = new GrpcNodeClient({
    address: a.address,
    trustDomain: td,
    bundle: bundleB,
    timeoutMs: 5_000,
  })
  try {
    // A's SVID does not chain to B's CA: refused at the TLS handshake.
    await assert.rejects(client.call('GetBundle', {}), NodeCallError)
    client.setBundle(bundleA)
    const pemOf = async () =>
      TrustBundle.fromSpiffeJson(td, (await client.call('GetBundle', {})).bundle).toPem()
    assert.equal(await pemOf(), bundleA.toPem())
    // The same authorities again (e.g. a sync that changed only JWT keys): the channel stays.
    client.setBundle(await publishedBundle(a))
    assert.equal(await pemOf(), bundleA.toPem())
    // Back to B's roots: the next call's channel trusts only them, so A is refused again.
    client.setBundle(bundleB)
    await assert.rejects(client.call('GetBundle', {}), NodeCallError)
  } finally {
    client.close()
  }
})
