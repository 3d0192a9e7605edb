import assert from 'node:assert/strict'
import { KeyObject, type webcrypto } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { encodePayload } from '../../src/attestors/tpm/protocol.js'
import type { AgentNodeAttestor } from '../../src/attestors/types.js'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { certificateToPem } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { marshalTpm2bPublic, publicFromKeyObject } from '../../src/tpm/structures/public.js'
import { eccEkTemplate } from '../../src/tpm/templates.js'
import { GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { startTestServer } from '../helpers/server.js'

// A real server with the TPM attestor: hostile, unauthenticated EK chains are refused fast and
// the node API keeps answering another client while they are processed.

const td = TrustDomain.parse('example.org')
const ecAlg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const

async function cert(
  subject: string,
  issuer: string,
  publicKey: webcrypto.CryptoKey,
  signingKey: webcrypto.CryptoKey,
  serial: string,
  isCa: boolean,
): Promise<Uint8Array> {
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject,
    issuer,
    notBefore: new Date(Date.now() - 86_400_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: ecAlg,
    publicKey,
    signingKey,
    extensions: [new x509.BasicConstraintsExtension(isCa, undefined, true)],
  })
  return new Uint8Array(c.rawData)
}

/** An EK certificate under `n` intermediates that all share one name and key (each issues all). */
async function loopingPayload(n: number): Promise<Uint8Array> {
  const loop = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const mids: Uint8Array[] = []
  for (let i = 0; i < n; i++) {
    mids.push(await cert('CN=Loop', 'CN=Loop', loop.publicKey, loop.privateKey, `1${i}`, true))
  }
  const ek = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const leaf = await cert('CN=EK', 'CN=Loop', ek.publicKey, loop.privateKey, '02', false)
  const ekPublic = marshalTpm2bPublic(
    publicFromKeyObject(KeyObject.from(ek.publicKey), eccEkTemplate()),
  )
  return encodePayload({
    version: 1,
    ekCert: leaf,
    ekChain: mids,
    ekPublic,
    akPublic: ekPublic,
    agentKeyPublic: ekPublic,
  })
}

const attestorFor = (payload: Uint8Array): AgentNodeAttestor => ({
  kind: 'NodeAttestor',
  name: 'tpm',
  payload: async () => payload,
  respond: async () => {
    throw new Error('no challenge expected')
  },
})

test('hostile EK chains are refused fast while the node API keeps answering others', async (t) => {
  const rootKey = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const root = await cert('CN=Root', 'CN=Root', rootKey.publicKey, rootKey.privateKey, '01', true)
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-ekroot-'))
  const caFile = join(dir, 'ek-root.pem')
  writeFileSync(caFile, certificateToPem(root))
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\nek_ca_bundle = "${caFile}"`,
  })
  const payloads = [await loopingPayload(8), await loopingPayload(4)]
  const key = await new MemoryKeyManager().generateKey('agent', 'ec-p256')

  // The other agent: GetBundle back to back, recording the longest wait for an answer.
  const other = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  const bad = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  try {
    // A legitimate agent (join token) that then keeps calling, and so trusts the bundle.
    await other.attestAgent(joinTokenAgentAttestor(await s.token()), key)
    await other.call('GetBundle', {})
    await assert.rejects(bad.attestAgent(attestorFor(payloads[1]!), key), NodeCallError)
    let running = true
    let longest = 0
    let answered = 0
    const pinger = (async () => {
      while (running) {
        const t0 = performance.now()
        await other.call('GetBundle', {})
        longest = Math.max(longest, performance.now() - t0)
        answered++
      }
    })()
    const times: number[] = []
    for (let round = 0; round < 5; round++) {
      for (const p of payloads) {
        const t0 = performance.now()
        await assert.rejects(
          bad.attestAgent(attestorFor(p), key),
          (e: unknown) => e instanceof NodeCallError && (e.status === 7 || e.status === 3),
        )
        times.push(performance.now() - t0)
      }
    }
    running = false
    await pinger
    const worst = Math.max(...times)
    t.diagnostic(
      `hostile attestation worst ${worst.toFixed(1)} ms; GetBundle answered ${answered}x, longest wait ${longest.toFixed(1)} ms`,
    )
    // Round trips over TLS on a shared 2-core machine: generous bounds; the unbounded search
    // took over 10 s of synchronous CPU per attempt.
    assert.ok(worst < 2000, `a hostile attestation took ${worst.toFixed(0)} ms`)
    assert.ok(answered > 0, 'the other client got no answer while attestations ran')
    assert.ok(longest < 2000, `the other client waited ${longest.toFixed(0)} ms for GetBundle`)
  } finally {
    other.close()
    bad.close()
    rmSync(dir, { recursive: true, force: true })
  }
})

test('an AttestAgent message over the per-message cap is refused by the transport', async () => {
  await using s = await startTestServer()
  const key = await new MemoryKeyManager().generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  try {
    const huge: AgentNodeAttestor = {
      ...attestorFor(new Uint8Array(200 << 10)),
      name: 'join_token',
    }
    await assert.rejects(
      client.attestAgent(huge, key),
      (e: unknown) =>
        e instanceof NodeCallError && e.status === 3 && /over 131072 bytes/.test(e.message),
    )
  } finally {
    client.close()
  }
})
