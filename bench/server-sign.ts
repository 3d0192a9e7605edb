/**
 * X.509-SVID signing through the server against raw signing and against the raw floor with proof
 * of possession (import the CSR's key, verify the CSR, sign), in one run.
 *
 * BatchNewX509SVID over loopback gRPC (batches of 100 CSRs for one authorized entry, signed
 * envelope, TLS, CSR checks, certificate building, response signature). The server runs in its
 * own process (bench/server-proc.ts) and its CPU time per SVID is what is compared: the client's
 * work (TLS, envelope checks, validating the returned SVIDs) is not the server's cost, and CPU
 * time does not count the waits a shared machine adds. Rounds alternate server batch, raw
 * signing and floor. Goal (issue 16): the server's rate at least half the floor's.
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
import { forkProc } from './fork-proc.js'
import { summary } from './summary.js'

const BATCHES = Number(process.env.BENCH_BATCHES ?? 10)
const BATCH = 100

const cpuUs = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

async function main(): Promise<void> {
  const srv = forkProc('server-proc.js', { profile: true })
  const info = await srv.ready
  const s = {
    address: String(info.address),
    dir: String(info.dir),
    token: async () => String((await srv.ask({ op: 'token' })).token),
    admin: async (method: string, path: string, body: unknown) =>
      (await srv.ask({ op: 'admin', method, path, body })).result as Record<string, unknown>,
  }
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

    // Baseline: the same CA key (disk key manager file) signing a certificate-sized message.
    const caKeyFile = join(s.dir, 'data', 'keys', 'x509-ca-1.key.pem')
    const caKey = readFileSync(caKeyFile, 'utf8')
    const tbs = new Uint8Array(450).fill(7)
    const { createPrivateKey } = await import('node:crypto')
    const keyObject = createPrivateKey(caKey)
    // The floor any server verifying proof of possession pays per SVID: import the CSR's key,
    // verify the CSR signature, sign the certificate.
    const { verify, createPublicKey: importKey } = await import('node:crypto')
    const { publicKeyFromCsr } = await import('../src/spiffe/csr.js')
    const csrKey = await publicKeyFromCsr(csr)
    const jwk = csrKey.export({ format: 'jwk' })
    const csrSig = new Uint8Array(await workload.sign(tbs))

    // Rounds alternate server batch, raw signing, floor, so load from other processes falls on
    // all three alike.
    let serverMs = 0
    let serverCpuUs = 0
    let rawMs = 0
    let rawWithPemMs = 0
    let floorMs = 0
    let floorCpuUs = 0
    for (let i = 0; i < BATCHES; i++) {
      const c0 = (await srv.ask({ op: 'cpu' })).us as number
      let t = performance.now()
      const r = await client.call('BatchNewX509SVID', { params }, auth)
      if (r.results.some((x) => x.status !== 0)) throw new Error('a signing failed')
      serverMs += performance.now() - t
      // Includes answering the two 'cpu' messages: a few µs, charged to the server.
      serverCpuUs += ((await srv.ask({ op: 'cpu' })).us as number) - c0
      t = performance.now()
      for (let j = 0; j < BATCH; j++)
        cryptoSign('sha256', tbs, { key: keyObject, dsaEncoding: 'ieee-p1363' })
      rawMs += performance.now() - t
      t = performance.now()
      for (let j = 0; j < BATCH; j++)
        cryptoSign('sha256', tbs, { key: caKey, dsaEncoding: 'ieee-p1363' })
      rawWithPemMs += performance.now() - t
      t = performance.now()
      const f0 = cpuUs()
      for (let j = 0; j < BATCH; j++) {
        const k = importKey({ key: jwk, format: 'jwk' })
        verify('sha256', tbs, { key: k, dsaEncoding: 'ieee-p1363' }, csrSig)
        cryptoSign('sha256', tbs, { key: keyObject, dsaEncoding: 'ieee-p1363' })
      }
      floorMs += performance.now() - t
      floorCpuUs += cpuUs() - f0
    }
    const n = BATCHES * BATCH

    const rate = (ms: number) => Math.round((n / ms) * 1000)
    const cpuRate = (us: number) => Math.round((n / us) * 1e6)
    console.log(
      `${n} X509-SVIDs in batches of ${BATCH} over loopback gRPC, server in its own process:`,
    )
    console.log(
      `  server BatchNewX509SVID   ${rate(serverMs)} SVIDs/s wall (with the client), ${cpuRate(serverCpuUs)} SVIDs per server CPU-second`,
    )
    console.log(`  raw crypto.sign (KeyObject) ${rate(rawMs)} signatures/s`)
    console.log(`  raw crypto.sign (PEM each)  ${rate(rawWithPemMs)} signatures/s`)
    console.log(
      `  raw floor: key import + CSR verify + sign ${rate(floorMs)} SVIDs/s wall, ${cpuRate(floorCpuUs)} per CPU-second`,
    )
    const share = floorCpuUs / serverCpuUs
    console.log(
      `RESULT server CPU per SVID / raw signing = ${(serverCpuUs / 1000 / rawMs).toFixed(2)}x (target < 3x)`,
    )
    console.log(
      `RESULT server rate = ${share.toFixed(2)} of the raw floor with proof of possession (CPU time; goal >= 0.5); wall clock incl. client ${(floorMs / serverMs).toFixed(2)}`,
    )
    summary({
      bench: 'server-sign',
      case: 'SVID signing rate (server CPU), share of the raw floor with proof of possession',
      value: share,
      op: '>=',
      bound: 0.5,
      unit: '',
    })
  } finally {
    client.close()
    srv.quit()
  }
}

await main()
