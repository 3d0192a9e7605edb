/**
 * Workload API latency as a workload sees it: clients in their own process, the agent (real
 * server + agent + Workload API endpoint with the unix attestor) in another, and the baseline (a
 * bare grpc-js server on a Unix socket answering with the agent's own bytes) in a third. Rounds
 * alternate which target goes first, so machine noise falls on both.
 *
 *  - FetchX509SVID first message and FetchJWTSVID (cached token): p50/p99 sequential (one
 *    workload), 20 and 100 concurrent workloads (own connection each); throughput at saturation
 *    (100 concurrent: calls / wall time).
 *  - 1,000 FetchX509SVID streams opened at once over 20 connections: time to all first messages.
 *  - Rotation fan-out: those 1,000 streams all receive the rotated SVID (agent: a new entry
 *    revision re-issued at sync; bare: 1,000 stream writes); from the fan-out's start to the last
 *    message received, on the shared monotonic clock.
 *
 * Run: npm run build && node dist/bench/workload-latency.js   (BENCH_ROUNDS, default 4)
 */
import { type ChildProcess, fork } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { AGENT_V8_FLAGS } from '../src/agent/heap-flags.js'
import { workloadServiceDefinition } from '../src/agent/workload-api/service.js'
import { pct, summary } from './summary.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4)
const here = dirname(fileURLToPath(import.meta.url))

/** A forked role with request/answer over IPC (one request at a time). */
class Proc {
  readonly child: ChildProcess
  private readonly queue: ((m: Record<string, unknown>) => void)[] = []
  constructor(script: string, args: string[]) {
    // BENCH_CPU_PROF=<dir> profiles the agent and the bare server (node --cpu-prof, <role>.cpuprofile),
    // so the agent's costs can be read against the bare server's for the same calls.
    const prof = process.env.BENCH_CPU_PROF
    const role = args[0]
    const measured = role === 'agent' || role === 'bare'
    const execArgv = [
      // Both measured processes run full collections before their RSS is read (op 'gc').
      ...(measured ? ['--expose-gc'] : []),
      // The agent runs with the flags it ships with (its systemd unit sets them);
      // BENCH_AGENT_FLAGS overrides them ('' for none, to measure what they change).
      ...(role === 'agent'
        ? process.env.BENCH_AGENT_FLAGS === undefined
          ? AGENT_V8_FLAGS
          : process.env.BENCH_AGENT_FLAGS.split(' ').filter(Boolean)
        : []),
      // BENCH_NODE_FLAGS="--trace-gc ...": extra node flags for both measured processes.
      ...(measured && process.env.BENCH_NODE_FLAGS ? process.env.BENCH_NODE_FLAGS.split(' ') : []),
      ...(prof && measured
        ? [
            '--cpu-prof',
            `--cpu-prof-dir=${prof}`,
            `--cpu-prof-name=${role}.cpuprofile`,
            // BENCH_CPU_PROF_INTERVAL=<µs>: finer sampling than the default 1000 µs.
            `--cpu-prof-interval=${process.env.BENCH_CPU_PROF_INTERVAL ?? 1000}`,
          ]
        : []),
    ]
    this.child = fork(join(here, script), args, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv,
    })
    this.child.on('message', (m: Record<string, unknown>) => this.queue.shift()?.(m))
  }
  next(): Promise<Record<string, unknown>> {
    return new Promise((r) => this.queue.push(r))
  }
  async ask(m: Record<string, unknown>): Promise<Record<string, unknown>> {
    const p = this.next()
    this.child.send(m)
    const a = await p
    if (a.error) throw new Error(String(a.error))
    return a
  }
  quit(): void {
    this.child.send({ op: 'quit' })
  }
}

function capture(socket: string, method: 'x509' | 'jwt'): Promise<Buffer> {
  const Ctor = grpc.makeGenericClientConstructor(workloadServiceDefinition, 'SpiffeWorkloadAPI')
  const c = new Ctor(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  ) as unknown as grpc.Client & Record<string, (...a: unknown[]) => unknown>
  const md = new grpc.Metadata()
  md.set('workload.spiffe.io', 'true')
  return new Promise((resolve, reject) => {
    if (method === 'x509') {
      const call = c.FetchX509SVID!(Buffer.alloc(0), md) as grpc.ClientReadableStream<Buffer>
      call.once('data', (b: Buffer) => {
        resolve(Buffer.from(b))
        call.cancel()
        c.close()
      })
      call.on('error', (e: grpc.ServiceError) => e.code !== grpc.status.CANCELLED && reject(e))
    } else {
      const req = Buffer.from([0x0a, 0x05, ...Buffer.from('bench')])
      c.FetchJWTSVID!(req, md, (err: Error | null, b: Buffer) => {
        c.close()
        if (err) reject(err)
        else resolve(Buffer.from(b))
      })
    }
  })
}

interface Case {
  readonly name: string
  readonly method: 'x509' | 'jwt'
  readonly workloads: number
  readonly calls: number
  /** Goals on the p50 and p99 ratios (undefined: reported only). */
  readonly p50Goal?: number
  readonly p99Goal?: number
}

const CASES: readonly Case[] = [
  {
    name: 'FetchX509SVID sequential',
    method: 'x509',
    workloads: 1,
    calls: 150,
    p50Goal: 1.2,
    p99Goal: 1.5,
  },
  {
    name: 'FetchX509SVID 20 concurrent',
    method: 'x509',
    workloads: 20,
    calls: 15,
    p50Goal: 1.2,
    p99Goal: 1.5,
  },
  { name: 'FetchX509SVID 100 concurrent', method: 'x509', workloads: 100, calls: 5 },
  { name: 'FetchJWTSVID sequential', method: 'jwt', workloads: 1, calls: 150, p50Goal: 1.3 },
  { name: 'FetchJWTSVID 20 concurrent', method: 'jwt', workloads: 20, calls: 15, p50Goal: 1.3 },
  { name: 'FetchJWTSVID 100 concurrent', method: 'jwt', workloads: 100, calls: 5 },
]

const f2 = (n: number) => n.toFixed(2).padStart(7)

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-lat-'))
  // The SPIFFE server in a process of its own, so the agent's process holds the agent only.
  const server = new Proc('wl-server.js', ['server', dir])
  const srvReady = await server.next()
  const agent = new Proc('wl-server.js', [
    'agent',
    dir,
    String(srvReady.ready),
    String(srvReady.admin),
  ])
  const bare = new Proc('wl-server.js', ['bare', dir])
  const client = new Proc('wl-client.js', [])
  try {
    const [a, b] = await Promise.all([agent.next(), bare.next(), client.next()])
    const sockets = { agent: String(a!.ready), bare: String(b!.ready) }
    const x509 = await capture(sockets.agent, 'x509')
    const jwt = await capture(sockets.agent, 'jwt')
    await bare.ask({
      op: 'bytes',
      x509: x509.toString('base64'),
      x509b: x509.toString('base64'),
      jwt: jwt.toString('base64'),
    })
    console.log(
      `Workload API, clients in their own process; ${x509.length}-byte X509SVIDResponse, ${jwt.length}-byte JWTSVIDResponse; ${ROUNDS} alternating rounds`,
    )
    console.log(
      'case                              target   p50 ms   p99 ms   calls/s   server CPU µs/call',
    )
    // BENCH_ONLY=<substring> runs only the matching cases; BENCH_ONLY=burst or =rss one part only.
    const only = process.env.BENCH_ONLY
    const part = only === 'burst' || only === 'rss'
    for (const c of CASES.filter((c) => !only || (!part && c.name.includes(only)))) {
      const lat = { agent: [] as number[], bare: [] as number[] }
      const wall = { agent: 0, bare: 0 }
      const cpu = { agent: 0, bare: 0 }
      for (let r = 0; r < ROUNDS; r++) {
        const order: ('agent' | 'bare')[] = r % 2 === 0 ? ['bare', 'agent'] : ['agent', 'bare']
        for (const t of order) {
          const srv = t === 'agent' ? agent : bare
          const c0 = (await srv.ask({ op: 'cpu' })).us as number
          const res = await client.ask({
            op: 'latency',
            socket: sockets[t],
            method: c.method,
            workloads: c.workloads,
            calls: c.calls,
          })
          lat[t].push(...(res.lat as number[]))
          wall[t] += res.wallMs as number
          // Includes connecting and the warm-up calls, alike for both targets.
          cpu[t] += ((await srv.ask({ op: 'cpu' })).us as number) - c0
        }
      }
      const row = (t: 'agent' | 'bare') => {
        const rate = (lat[t].length / wall[t]) * 1000
        // Calls made per round: measured ones plus two warm-up calls per workload.
        const calls = ROUNDS * c.workloads * (c.calls + 2)
        console.log(
          `${c.name.padEnd(34)}${t.padEnd(7)}${f2(pct(lat[t], 50))}  ${f2(pct(lat[t], 99))}   ${rate.toFixed(0).padStart(6)}   ${(cpu[t] / calls).toFixed(0).padStart(8)}`,
        )
        return rate
      }
      const rb = row('bare')
      const ra = row('agent')
      const p50 = pct(lat.agent, 50) / pct(lat.bare, 50)
      const p99 = pct(lat.agent, 99) / pct(lat.bare, 99)
      console.log(
        `RESULT ${c.name}: p50 ${p50.toFixed(2)}x, p99 ${p99.toFixed(2)}x, throughput ${(ra / rb).toFixed(2)} of bare, server CPU per call ${(cpu.agent / cpu.bare).toFixed(2)}x`,
      )
      const bench = 'workload-latency'
      if (c.p50Goal)
        summary({ bench, case: `${c.name} p50`, value: p50, op: '<=', bound: c.p50Goal, unit: 'x' })
      if (c.p99Goal)
        summary({ bench, case: `${c.name} p99`, value: p99, op: '<=', bound: c.p99Goal, unit: 'x' })
      summary({
        bench,
        case: `${c.name}: server CPU per call, agent / bare`,
        value: cpu.agent / cpu.bare,
        op: '>=',
        bound: 0,
        unit: 'x',
      })
      if (c.workloads === 100)
        summary({
          bench,
          case: `${c.method === 'x509' ? 'FetchX509SVID' : 'FetchJWTSVID'} throughput (100 concurrent), share of bare`,
          value: ra / rb,
          op: '>=',
          bound: 0,
          unit: '',
        })
    }

    // 1,000 streams at once over 20 connections, then the rotation fan-out to all of them.
    const burst = { agent: [] as number[], bare: [] as number[] }
    const fan = { agent: [] as number[], bare: [] as number[] }
    const rss = { agent: [] as number[], bare: [] as number[] }
    const burstRounds = only && only !== 'burst' ? 0 : Math.max(3, ROUNDS)
    for (let r = 0; r < burstRounds; r++) {
      const order: ('agent' | 'bare')[] = r % 2 === 0 ? ['bare', 'agent'] : ['agent', 'bare']
      for (const t of order) {
        const srv = t === 'agent' ? agent : bare
        const before = (await srv.ask({ op: 'rss' })).rss as number
        burst[t].push(
          (await client.ask({ op: 'open', socket: sockets[t], connections: 20, streams: 1000 }))
            .ms as number,
        )
        rss[t].push(((await srv.ask({ op: 'rss' })).rss as number) - before)
        const second = client.ask({ op: 'awaitSecond' })
        const { t0 } = await srv.ask({ op: 'rotate' })
        const { last } = await second
        fan[t].push((last as number) - (t0 as number))
        await client.ask({ op: 'closeAll' })
        await new Promise((res) => setTimeout(res, 300))
      }
    }
    if (burstRounds > 0) {
      const med = (xs: number[]) => pct(xs, 50)
      console.log('                                          bare ms  agent ms   ratio')
      const line = (name: string, v: { agent: number[]; bare: number[] }) => {
        const ratio = med(v.agent) / med(v.bare)
        console.log(
          `${name.padEnd(42)}${f2(med(v.bare))}  ${f2(med(v.agent))}  ${ratio.toFixed(2)}x`,
        )
        return ratio
      }
      const rb = line('1,000 streams at once, all first messages', burst)
      const rf = line('rotation fan-out to 1,000 streams', fan)
      console.log(
        `RSS growth with 1,000 open streams: bare +${(med(rss.bare) / 2 ** 20).toFixed(1)} MiB, agent +${(med(rss.agent) / 2 ** 20).toFixed(1)} MiB`,
      )
      const bench = 'workload-latency'
      summary({
        bench,
        case: '1,000 streams at once (20 conns), first messages',
        value: rb,
        op: '<=',
        bound: 1.5,
        unit: 'x',
      })
      summary({
        bench,
        case: 'rotation fan-out to 1,000 streams vs bare writes',
        value: rf,
        op: '<=',
        bound: 2,
        unit: 'x',
      })
      summary({
        bench,
        case: 'rotation fan-out to 1,000 streams, agent ms',
        value: med(fan.agent),
        op: '<=',
        bound: 1000,
        unit: 'ms',
      })
    }

    if (!only || only === 'rss') await rssPart(agent, bare, client, sockets)
  } finally {
    agent.quit()
    bare.quit()
    client.quit()
    await new Promise((r) => setTimeout(r, 300))
    server.quit()
    await new Promise((r) => setTimeout(r, 500))
    rmSync(dir, { recursive: true, force: true })
  }
}

/** VmRSS of a child, from /proc/<pid>/status, after it ran full collections. */
async function vmRss(p: Proc): Promise<number> {
  const { mem } = await p.ask({ op: 'gc' })
  const status = readFileSync(`/proc/${p.child.pid}/status`, 'utf8')
  if (process.env.BENCH_MEM) {
    // Anonymous (heap, malloc) against file-backed (node's own pages touched): which one grew.
    const kb = (k: string) =>
      /^(\w+):\s+(\d+) kB$/m.exec(status.slice(status.indexOf(`${k}:`)))?.[2]
    console.log(p.child.pid, JSON.stringify(mem), 'anon', kb('RssAnon'), 'file', kb('RssFile'))
  }
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status)
  if (!m) throw new Error('no VmRSS in /proc/<pid>/status')
  return Number(m[1]) * 1024
}

/**
 * RSS of the agent and the bare server, each its own process: idle, with 1,000
 * more cached SVIDs (agent), then with 100 and with 1,000 workloads connected (own connection
 * each, a FetchX509SVID stream open). Goal: agent ≤ 1.1x the bare server plus the cached SVIDs' own bytes.
 */
async function rssPart(
  agent: Proc,
  bare: Proc,
  client: Proc,
  sockets: { agent: string; bare: string },
): Promise<void> {
  const mib = (n: number) => (n / 2 ** 20).toFixed(1).padStart(7)
  const targets = { agent, bare }
  const idle = { agent: await vmRss(agent), bare: await vmRss(bare) }
  let cached = (await agent.ask({ op: 'entries', n: 0 })) as { entries: number; bytes: number }
  console.log(
    'RSS (VmRSS after full GCs)                    bare MiB  agent MiB  agent-cached / bare (goal ≤ 1.1x)  growth over idle, bare / agent MiB',
  )
  const report = (name: string, v: { agent: number; bare: number }) => {
    const ratio = (v.agent - cached.bytes) / v.bare
    console.log(
      `${name.padEnd(46)}${mib(v.bare)}    ${mib(v.agent)}    ${ratio.toFixed(2)}x (cached SVIDs ${cached.entries}, ${(cached.bytes / 1024).toFixed(0)} KiB)        ${mib(v.bare - idle.bare)} / ${mib(v.agent - idle.agent)}`,
    )
    summary({
      bench: 'workload-latency',
      case: `RSS ${name}, agent − cached SVID bytes vs bare`,
      value: ratio,
      op: '<=',
      bound: 1.1,
      unit: 'x',
    })
  }
  report('idle', idle)
  // Cumulative, in this order: V8 keeps heap pages it grew into, so a step measured after a
  // larger one would report the larger one's high-water mark.
  cached = (await agent.ask({ op: 'entries', n: 1000 })) as { entries: number; bytes: number }
  report(`${cached.entries.toLocaleString('en')} cached SVIDs`, {
    agent: await vmRss(agent),
    bare: await vmRss(bare),
  })
  for (const n of [100, 1000]) {
    const v = { agent: 0, bare: 0 }
    for (const t of ['bare', 'agent'] as const) {
      await client.ask({ op: 'open', socket: sockets[t], connections: n, streams: n })
      v[t] = await vmRss(targets[t])
      await client.ask({ op: 'closeAll' })
      await new Promise((res) => setTimeout(res, 300))
    }
    report(`+ ${n.toLocaleString('en')} workloads connected`, v)
  }
}

await main()
