/**
 * Workload API performance against a bare grpc-js baseline, in one run.
 *
 *  - FetchX509SVID first-message latency (p50/p99), 100 client connections over the Unix socket,
 *    each opening streams one after another: the real agent endpoint (peer credentials, unix
 *    attestor, PID-reuse check, cache lookup, encoding) against a bare grpc-js server on the same
 *    kind of socket answering with the very bytes the agent sent (same size).
 *  - FetchJWTSVID throughput with the same 100 connections for 3 s each.
 *  - RSS growth with 100 workloads holding an open FetchX509SVID stream.
 * The goal in the issue: under 1.5x the baseline at p50.
 *
 * Run: npm run build && node dist/bench/workload-api.js   (BENCH_CALLS per client, default 20)
 */
import { setMaxListeners } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../src/agent/workload-api/attestors/unix.js'
import { workloadClient } from '../src/agent/workload-api/client.js'
import { startWorkloadApi } from '../src/agent/workload-api/server.js'
import { workloadServiceDefinition } from '../src/agent/workload-api/service.js'
import { silentLog } from '../src/common/log.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { startTestAgent } from '../test/helpers/agent.js'
import { startTestServer } from '../test/helpers/server.js'

const CLIENTS = 100
const CALLS = Number(process.env.BENCH_CALLS ?? 20)
const td = TrustDomain.parse('example.org')

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!

/** The first message a raw client receives for a method (bytes as sent). */
function captureFirst(
  socket: string,
  method: 'FetchX509SVID' | 'FetchJWTSVID',
  request: Uint8Array,
): Promise<Buffer> {
  const Client = grpc.makeGenericClientConstructor(workloadServiceDefinition, 'SpiffeWorkloadAPI')
  const c = new Client(`unix:${socket}`, grpc.credentials.createInsecure()) as unknown as Record<
    string,
    (...a: unknown[]) => unknown
  > &
    grpc.Client
  const md = new grpc.Metadata()
  md.set('workload.spiffe.io', 'true')
  return new Promise((resolve, reject) => {
    if (method === 'FetchX509SVID') {
      const call = c.FetchX509SVID!(Buffer.from(request), md) as grpc.ClientReadableStream<Buffer>
      call.once('data', (b: Buffer) => {
        resolve(Buffer.from(b))
        call.cancel()
        c.close()
      })
      call.once('error', (e: Error) => {
        if (
          !(e as grpc.ServiceError).code ||
          (e as grpc.ServiceError).code !== grpc.status.CANCELLED
        )
          reject(e)
      })
    } else {
      c.FetchJWTSVID!(Buffer.from(request), md, (err: Error | null, b: Buffer) => {
        c.close()
        if (err) reject(err)
        else resolve(Buffer.from(b))
      })
    }
  })
}

/** A bare grpc-js Workload API on a Unix socket, answering with fixed bytes. */
async function bareServer(socket: string, x509: Buffer, jwt: Buffer): Promise<grpc.Server> {
  const server = new grpc.Server()
  const unimplemented = (_c: unknown, cb?: grpc.sendUnaryData<Buffer>) =>
    cb?.({ code: grpc.status.UNIMPLEMENTED })
  server.addService(workloadServiceDefinition, {
    FetchX509SVID(call: grpc.ServerWritableStream<Buffer, Buffer>) {
      call.write(x509)
    },
    FetchJWTSVID(_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      cb(null, jwt)
    },
    FetchX509Bundles: unimplemented,
    FetchJWTBundles: unimplemented,
    ValidateJWTSVID: unimplemented,
    FetchWITSVID: unimplemented,
    FetchWITBundles: unimplemented,
  })
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (e) =>
      e ? reject(e) : resolve(),
    ),
  )
  return server
}

async function measure(
  socket: string,
): Promise<{ p50: number; p99: number; jwtPerSecond: number }> {
  const clients = Array.from({ length: CLIENTS }, () =>
    workloadClient(`unix://${socket}`, { ownConnection: true }),
  )
  try {
    await Promise.all(clients.map((c) => c.fetchX509())) // connect and warm up
    const lat: number[] = []
    await Promise.all(
      clients.map(async (c) => {
        for (let i = 0; i < CALLS; i++) {
          const t = performance.now()
          await c.fetchX509()
          lat.push(performance.now() - t)
        }
      }),
    )
    let jwtCalls = 0
    const end = Date.now() + 3000
    await Promise.all(
      clients.map(async (c) => {
        while (Date.now() < end) {
          await c.fetchJwt(['bench'])
          jwtCalls++
        }
      }),
    )
    return { p50: pct(lat, 50), p99: pct(lat, 99), jwtPerSecond: Math.round(jwtCalls / 3) }
  } finally {
    for (const c of clients) c.close()
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-wl-'))
  try {
    await using s = await startTestServer()
    const token = await s.token('spiffe://example.org/host')
    await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/bench',
      parent_id: 'spiffe://example.org/host',
      selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }],
    })
    await using agent = await startTestAgent(s.address, dir, token, { syncIntervalMs: 5000 })
    const manager = agent.manager
    const agentSock = join(dir, 'agent.sock')
    const api = await startWorkloadApi({
      socketPath: agentSock,
      source: manager,
      attestors: [unixAttestor()],
      trustDomain: td,
      log: silentLog,
    })
    {
      const x509 = await captureFirst(agentSock, 'FetchX509SVID', new Uint8Array())
      // JWTSVIDRequest { audience: ["bench"] } = field 1, length 5, "bench"
      const jwt = await captureFirst(
        agentSock,
        'FetchJWTSVID',
        Uint8Array.from([0x0a, 0x05, ...Buffer.from('bench')]),
      )
      const bareSock = join(dir, 'bare.sock')
      const bare = await bareServer(bareSock, x509, jwt)
      try {
        const base = await measure(bareSock)
        const ours = await measure(agentSock)

        // RSS with 100 workloads each holding a FetchX509SVID stream open on the agent.
        global.gc?.()
        const before = process.memoryUsage().rss
        const abort = new AbortController()
        setMaxListeners(CLIENTS + 10, abort.signal)
        const watchers = Array.from({ length: CLIENTS }, () =>
          workloadClient(`unix://${agentSock}`, { ownConnection: true }),
        )
        let got = 0
        const watching = watchers.map((w) =>
          w.watchX509(() => got++, abort.signal).catch(() => undefined),
        )
        while (got < CLIENTS) await new Promise((r) => setTimeout(r, 20))
        const during = process.memoryUsage().rss
        abort.abort()
        await Promise.all(watching)
        for (const w of watchers) w.close()

        console.log(
          `${CLIENTS} clients over a Unix socket, ${CALLS} FetchX509SVID each; ${x509.length}-byte response`,
        )
        console.log('                       p50 ms   p99 ms   JWT fetches/s')
        console.log(
          `  bare grpc-js        ${base.p50.toFixed(2).padStart(6)}   ${base.p99.toFixed(2).padStart(6)}   ${base.jwtPerSecond}`,
        )
        console.log(
          `  spiffe-edge agent   ${ours.p50.toFixed(2).padStart(6)}   ${ours.p99.toFixed(2).padStart(6)}   ${ours.jwtPerSecond}`,
        )
        console.log(
          `RESULT FetchX509SVID p50 ratio = ${(ours.p50 / base.p50).toFixed(2)}x (goal < 1.5x), p99 ratio = ${(ours.p99 / base.p99).toFixed(2)}x`,
        )
        console.log(
          `RESULT JWT throughput ratio = ${(ours.jwtPerSecond / base.jwtPerSecond).toFixed(2)} of the baseline`,
        )
        console.log(
          `RSS: ${(before / 2 ** 20).toFixed(0)} MiB before, ${(during / 2 ** 20).toFixed(0)} MiB with ${CLIENTS} open streams (+${((during - before) / 2 ** 20).toFixed(1)} MiB; server, agent and clients in one process)`,
        )
        bare.forceShutdown()
      } finally {
        await api.close()
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
