/**
 * X.509-SVID signing through the server against raw signing and against the raw floor with proof
 * of possession (import the CSR's key, verify the CSR, sign), in one run.
 *
 * BatchNewX509SVID over loopback gRPC (batches of 100 CSRs for one authorized entry, signed
 * envelope, TLS, CSR checks, certificate building, response signature). The server runs in its
 * own process (bench/server-proc.ts) and its CPU time per SVID is what is compared: the client's
 * work (TLS, envelope checks, validating the returned SVIDs) is not the server's cost, and CPU
 * time does not count the waits a shared machine adds. Every CSR is distinct (its own key) and
 * sent once, so no cache could profit. The floor verifies the very CSRs the server got, with the
 * cheapest key import known (the server's own: a raw EC point); the floor with a JWK import (the
 * definition before 2026-12-02) is printed beside it. Rounds alternate server batch, raw signing
 * and the floors. Goal (issue 16): the server's rate at least half the floor's.
 *
 * Run: npm run build && node dist/bench/server-sign.js   (BENCH_BATCHES, default 10; BENCH_WARM
 * warm-up batches, default 10; BENCH_CPU_PROF=<dir> profiles the server)
 */
import { createPrivateKey, sign as cryptoSign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { joinTokenAgentAttestor } from '../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { type BenchCsr, distinctCsrs, floor } from './csrs.js'
import { forkProc } from './fork-proc.js'
import { summary } from './summary.js'

const BATCHES = Number(process.env.BENCH_BATCHES ?? 10)
const BATCH = 100
// Warm-up batches before the measured rounds: V8 keeps compiling the server's hot path on its
// background threads for about the first thousand SVIDs (measured: with 300 SVIDs of warm-up,
// 50-80 µs of each measured SVID's CPU was on those threads; after 1200, 26-34 µs).
const WARM = Number(process.env.BENCH_WARM ?? 10)

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
    // Distinct CSRs, each for its own key, none sent twice: WARM batches to warm the server up
    // (JIT, caches a long-running server has warm), then BATCHES measured ones.
    const csrs = await distinctCsrs((WARM + BATCHES) * BATCH)
    const batchOf = (i: number) => csrs.slice(i * BATCH, (i + 1) * BATCH)
    const paramsOf = (b: BenchCsr[]) => b.map((c) => ({ entryId: String(entry.id), csr: c.csr }))
    for (let w = 0; w < WARM; w++)
      await client.call('BatchNewX509SVID', { params: paramsOf(batchOf(w)) }, auth)

    // Baseline: the same CA key (disk key manager file) signing a certificate-sized message.
    const caKeyFile = join(s.dir, 'data', 'keys', 'x509-ca-1.key.pem')
    const caKey = readFileSync(caKeyFile, 'utf8')
    const tbs = new Uint8Array(450).fill(7)
    const keyObject = createPrivateKey(caKey)
    await floor(batchOf(0), keyObject) // warm up
    await floor(batchOf(0), keyObject, 'jwk')

    // Rounds alternate server batch, raw signing, floor (raw point import), floor (JWK import),
    // so load from other processes falls on all alike. The floors verify the very CSRs the
    // server got in that round.
    let serverMs = 0
    let serverCpuUs = 0
    let rawMs = 0
    let rawWithPemMs = 0
    let floorMs = 0
    let floorCpuUs = 0
    let jwkFloorCpuUs = 0
    let loopMaxMs = 0
    await srv.ask({ op: 'loop' }) // resets the server's event-loop delay histogram
    const main0 = (await srv.ask({ op: 'mainCpu' })).us as number
    for (let i = 0; i < BATCHES; i++) {
      const batch = batchOf(WARM + i)
      const params = paramsOf(batch)
      const c0 = (await srv.ask({ op: 'cpu' })).us as number
      let t = performance.now()
      const r = await client.call('BatchNewX509SVID', { params }, auth)
      if (r.results.some((x) => x.status !== 0)) throw new Error('a signing failed')
      serverMs += performance.now() - t
      // Includes answering the two 'cpu' messages: a few µs, charged to the server.
      serverCpuUs += ((await srv.ask({ op: 'cpu' })).us as number) - c0
      loopMaxMs = Math.max(loopMaxMs, (await srv.ask({ op: 'loop' })).maxMs as number)
      t = performance.now()
      for (let j = 0; j < BATCH; j++)
        cryptoSign('sha256', tbs, { key: keyObject, dsaEncoding: 'ieee-p1363' })
      rawMs += performance.now() - t
      t = performance.now()
      for (let j = 0; j < BATCH; j++)
        cryptoSign('sha256', tbs, { key: caKey, dsaEncoding: 'ieee-p1363' })
      rawWithPemMs += performance.now() - t
      t = performance.now()
      let f0 = cpuUs()
      await floor(batch, keyObject)
      floorMs += performance.now() - t
      floorCpuUs += cpuUs() - f0
      f0 = cpuUs()
      await floor(batch, keyObject, 'jwk')
      jwkFloorCpuUs += cpuUs() - f0
    }
    const mainUs = ((await srv.ask({ op: 'mainCpu' })).us as number) - main0
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
      `  raw floor: key import (raw point) + CSR verify + sign ${rate(floorMs)} SVIDs/s wall, ${cpuRate(floorCpuUs)} per CPU-second`,
    )
    console.log(
      `  the same floor with a JWK key import (the floor before 2026-12-02 14:00) ${cpuRate(jwkFloorCpuUs)} per CPU-second; share ${(jwkFloorCpuUs / serverCpuUs).toFixed(2)}`,
    )
    const us = (x: number) => `${Math.round(x / n)} µs`
    console.log(
      `  CPU per SVID: server ${us(serverCpuUs)} (main thread ${us(mainUs)}, the rest GC and JIT threads), floor ${us(floorCpuUs)}; server event loop delay max ${loopMaxMs.toFixed(1)} ms during the rounds`,
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
