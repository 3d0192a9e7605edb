import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { rmSync } from 'node:fs'
import { test } from 'node:test'
import {
  agentArgs,
  hostTokenFor,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { decodeSecret, EnvoySdsClient, type Response } from '../helpers/envoy-sds-client.js'

const fingerprints = (r: Response): string[] => {
  const s = r.resources.map((a) => decodeSecret(a)).find((x) => x.name === 'ROOTCA')
  const pem = s?.validation_context?.trusted_ca?.inline_bytes.toString() ?? ''
  return (pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []).map(
    (p) => new X509Certificate(p).fingerprint256,
  )
}

/**
 * Issue 15 (SDS): a CA rotation reaches Envoy by push. A 30 s CA (the next one is prepared at
 * half-life and published in the bundle before it signs): an open StreamSecrets for ROOTCA
 * receives a new version whose trusted_ca holds the old and the next CA, without asking again.
 */
test('a CA rotation pushes a new ROOTCA to an open SDS stream', { timeout: 120_000 }, async (t) => {
  const dir = processDir('spiffe-edge-sds-ca-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const server = await startServerProcess(
    dir,
    t,
    'ca_ttl = "30s"\ndefault_x509_svid_ttl = "20s"\nagent_ttl = "25s"\nattest_rate_per_second = 1000',
  )
  const token = await hostTokenFor(server, 'spiffe://example.org/envoy')
  const config = writeAgentConfig(dir, server.address, 'sync_interval = "1s"')
  const agent = await startCli(
    [...agentArgs(config, '--insecure-bootstrap'), '--join-token', token],
    t,
  )
  const client = new EnvoySdsClient(String(agent.first.socket_path))
  t.after(() => client.close())
  const s = client.stream()
  t.after(() => s.close())
  s.send({ resource_names: ['ROOTCA'] })
  let last = await s.response(0)
  const first = fingerprints(last)
  assert.equal(first.length, 1)
  // ACK every response, as Envoy does, until the bundle has grown.
  for (let i = 1; fingerprints(last).length < 2; i++) {
    s.send({
      resource_names: ['ROOTCA'],
      version_info: last.version_info,
      response_nonce: last.nonce,
    })
    last = await s.response(i, 60_000)
  }
  const both = fingerprints(last)
  assert.ok(both.includes(first[0]!), 'the current CA is still trusted')
  assert.equal(both.length, 2)
  assert.ok(Number(last.version_info) > 1)
})
