/**
 * Requirement: X.509-SVID signing through the server adds less than 3x over raw signing.
 *
 * In one run, on one core: BatchNewX509SVID over loopback gRPC (batches of 100 CSRs for one
 * authorized entry, signed envelope, TLS, CSR checks, certificate building, response signature)
 * against the same number of raw crypto.sign calls with the CA's key over a certificate-sized
 * message. Prints SVIDs/s for both and their ratio.
 *
 * Run: npm run build && node dist/bench/server-sign.js   (BENCH_BATCHES, default 10)
 */
import { sign as cryptoSign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { joinTokenAgentAttestor } from '../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { createCsr } from '../src/spiffe/csr.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { startTestServer } from '../test/helpers/server.js'

const BATCHES = Number(process.env.BENCH_BATCHES ?? 10)
const BATCH = 100

async function main(): Promise<void> {
  await using s = await startTestServer()
  const td = TrustDomain.parse('example.org')
  const keys = new MemoryKeyManager()
  const agentKey = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  try {
    const att = await client.attestAgent(joinTokenAgentAttestor(await s.token()), agentKey)
    const auth = { spiffeId: att.svid.spiffeId, chain: att.svid.certChain, signer: agentKey }
    const entry = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/bench',
      parent_id: att.svid.spiffeId,
      selectors: [{ type: 'unix', value: 'uid:0' }],
    })
    const workload = await keys.generateKey('w', 'ec-p256')
    const csr = await createCsr(workload)
    const params = Array.from({ length: BATCH }, () => ({ entryId: String(entry.id), csr }))
    await client.call('BatchNewX509SVID', { params: params.slice(0, 5) }, auth) // warm up

    let t = performance.now()
    for (let i = 0; i < BATCHES; i++) {
      const r = await client.call('BatchNewX509SVID', { params }, auth)
      if (r.results.some((x) => x.status !== 0)) throw new Error('a signing failed')
    }
    const serverMs = performance.now() - t
    const n = BATCHES * BATCH

    // Baseline: the same CA key (disk key manager file) signing a certificate-sized message.
    const caKeyFile = join(s.dir, 'data', 'keys', 'x509-ca-1.key.pem')
    const caKey = readFileSync(caKeyFile, 'utf8')
    const tbs = new Uint8Array(450).fill(7)
    t = performance.now()
    for (let i = 0; i < n; i++) cryptoSign('sha256', tbs, { key: caKey, dsaEncoding: 'ieee-p1363' })
    const rawWithPemMs = performance.now() - t
    const { createPrivateKey } = await import('node:crypto')
    const keyObject = createPrivateKey(caKey)
    t = performance.now()
    for (let i = 0; i < n; i++)
      cryptoSign('sha256', tbs, { key: keyObject, dsaEncoding: 'ieee-p1363' })
    const rawMs = performance.now() - t

    // The floor any server verifying proof of possession pays per SVID: import the CSR's key,
    // verify the CSR signature, sign the certificate.
    const { verify, createPublicKey: importKey } = await import('node:crypto')
    const { publicKeyFromCsr } = await import('../src/spiffe/csr.js')
    const csrKey = await publicKeyFromCsr(csr)
    const jwk = csrKey.export({ format: 'jwk' })
    const csrSig = new Uint8Array(await workload.sign(tbs))
    t = performance.now()
    for (let i = 0; i < n; i++) {
      const k = importKey({ key: jwk, format: 'jwk' })
      verify('sha256', tbs, { key: k, dsaEncoding: 'ieee-p1363' }, csrSig)
      cryptoSign('sha256', tbs, { key: keyObject, dsaEncoding: 'ieee-p1363' })
    }
    const floorMs = performance.now() - t

    const rate = (ms: number) => Math.round((n / ms) * 1000)
    console.log(
      `${n} X509-SVIDs in batches of ${BATCH} over loopback gRPC (one process, one core):`,
    )
    console.log(`  server BatchNewX509SVID   ${rate(serverMs)} SVIDs/s`)
    console.log(`  raw crypto.sign (KeyObject) ${rate(rawMs)} signatures/s`)
    console.log(`  raw crypto.sign (PEM each)  ${rate(rawWithPemMs)} signatures/s`)
    console.log(`  raw floor: key import + CSR verify + sign ${rate(floorMs)} SVIDs/s`)
    console.log(
      `RESULT server cost / raw signing = ${(serverMs / rawMs).toFixed(2)}x (target < 3x)`,
    )
    console.log(
      `RESULT server cost / raw floor with proof of possession = ${(serverMs / floorMs).toFixed(2)}x`,
    )
  } finally {
    client.close()
  }
}

await main()
