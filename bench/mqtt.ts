/**
 * The node API over MQTT v5 through a local Mosquitto (TLS) against the same over gRPC (TLS), in
 * one run, the client in its own process (so client and server do not share an event loop):
 *
 *  - join-token attestation, agent key to agent SVID, as an agent starting does: each attempt
 *    opens its connection (MQTT: its own bootstrap connection, whose client id names the session;
 *    gRPC: a new client, so a new TLS channel). The MQTT client learns the server's encryption
 *    key once (hello, in the warm-up), as a restarting agent would from its bundle push.
 *  - a 100-CSR BatchNewX509SVID on an attested agent's warm connection.
 *
 * Medians of BENCH_N runs each (default 10), the two transports interleaved; printed: the table
 * and the MQTT / gRPC ratios (goal <= 1.2x), and the CPU each call cost the agent, the server and
 * the broker (sums over every thread of each process from /proc/<pid>/task/<tid>/schedstat, ns,
 * read before and after each call; means over the runs). The server runs in this process, the
 * agent in a child, so each call's window holds only that call's work (and timers).
 *
 * Run: npm run build && node dist/bench/mqtt.js
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { startMosquitto } from '../hardware-sim/mosquitto.js'
import { joinTokenAgentAttestor } from '../src/attestors/join-token/agent.js'
import { silentLog } from '../src/common/log.js'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { adminCall } from '../src/server/admin-client.js'
import { startServer } from '../src/server/server.js'
import { TrustBundle } from '../src/spiffe/bundle.js'
import { createCsr } from '../src/spiffe/csr.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { MqttNodeClient } from '../src/transport/mqtt/client.js'
import type { AgentAuth, NodeClient } from '../src/transport/node-client.js'
import { clientOrMain } from './client-entry.js'
import { benchToken, cpuNs, mqttServerConfig } from './mqtt-common.js'

const N = Number(process.env.BENCH_N ?? 10)
const BATCH = 100
const td = TrustDomain.parse('example.org')

interface Job {
  serverPid: number
  brokerPid: number
  grpc: string
  mqtt: string
  ca: string
  bundle: string
  tokens: { grpc: string[]; mqtt: string[] }
  entryId: string
}

type Cpu = { agent: number; server: number; broker: number }
const cpuSample = (job: Job): Cpu => ({
  agent: cpuNs('self'),
  server: cpuNs(job.serverPid),
  broker: cpuNs(job.brokerPid),
})
const cpuAdd = (acc: Cpu, a: Cpu, b: Cpu) => {
  acc.agent += b.agent - a.agent
  acc.server += b.server - a.server
  acc.broker += b.broker - a.broker
}
const zero = (): Cpu => ({ agent: 0, server: 0, broker: 0 })

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

async function client(job: Job): Promise<void> {
  const bundle = TrustBundle.fromSpiffeJson(td, job.bundle)
  const grpc = new GrpcNodeClient({ address: job.grpc, trustDomain: td, bundle })
  const mqtt = new MqttNodeClient({
    url: job.mqtt,
    trustDomain: td,
    bundle,
    topicPrefix: 'spiffe-edge',
    ca: Buffer.from(job.ca),
  })
  const keys = new MemoryKeyManager()
  const csrs: Uint8Array[] = []
  for (let i = 0; i < BATCH; i++)
    csrs.push(await createCsr(await keys.generateKey(`w${i}`, 'ec-p256')))
  const attestMs: Record<'grpc' | 'mqtt', number[]> = { grpc: [], mqtt: [] }
  const batchMs: Record<'grpc' | 'mqtt', number[]> = { grpc: [], mqtt: [] }
  const auths: Partial<Record<'grpc' | 'mqtt', AgentAuth>> = {}
  const clients: Record<'grpc' | 'mqtt', NodeClient> = { grpc, mqtt }
  const attestCpu = { grpc: zero(), mqtt: zero() }
  const batchCpu = { grpc: zero(), mqtt: zero() }
  // Run 0 of each is a warm-up (connections, JIT, the MQTT hello); not timed.
  for (let i = 0; i <= N; i++) {
    for (const t of ['grpc', 'mqtt'] as const) {
      const key = await keys.generateKey(`a-${t}-${i}`, 'ec-p256')
      const cpu0 = cpuSample(job)
      const start = performance.now()
      let c = clients[t]
      if (t === 'grpc' && i > 0) {
        c.close()
        c = new GrpcNodeClient({ address: job.grpc, trustDomain: td, bundle })
        clients.grpc = c
      }
      const r = await c.attestAgent(joinTokenAgentAttestor(job.tokens[t][i]!), key)
      if (i > 0) {
        attestMs[t].push(performance.now() - start)
        cpuAdd(attestCpu[t], cpu0, cpuSample(job))
      }
      auths[t] = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
    }
  }
  for (let i = 0; i <= N; i++) {
    for (const t of ['grpc', 'mqtt'] as const) {
      const cpu0 = cpuSample(job)
      const start = performance.now()
      const r = await clients[t].call(
        'BatchNewX509SVID',
        { params: csrs.map((csr) => ({ entryId: job.entryId, csr })) },
        auths[t],
      )
      if (i > 0) {
        batchMs[t].push(performance.now() - start)
        cpuAdd(batchCpu[t], cpu0, cpuSample(job))
      }
      if (r.results.some((x) => x.status !== 0)) throw new Error(`${t}: a batch item failed`)
    }
  }
  clients.grpc.close()
  mqtt.close()
  process.stdout.write(
    `${JSON.stringify({
      attest: { grpc: median(attestMs.grpc), mqtt: median(attestMs.mqtt) },
      batch: { grpc: median(batchMs.grpc), mqtt: median(batchMs.mqtt) },
      attestCpu,
      batchCpu,
    })}\n`,
  )
}

async function main(): Promise<void> {
  await using broker = await startMosquitto({ tls: true })
  const { mkdtempSync, rmSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-mqtt-'))
  try {
    const config = mqttServerConfig(broker, dir, `[plugins.NodeAttestor.join_token]\n`)
    await using server = await startServer(config, { log: silentLog })
    const token = () => benchToken(server.adminSocket)
    const tokens = { grpc: [] as string[], mqtt: [] as string[] }
    for (let i = 0; i <= N; i++) {
      tokens.grpc.push(await token())
      tokens.mqtt.push(await token())
    }
    const entry = await adminCall(server.adminSocket, 'POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/bench/w',
      parent_id: 'spiffe://example.org/bench',
      selectors: [{ type: 'unix', value: 'uid:1' }],
    })
    const job: Job = {
      serverPid: process.pid,
      brokerPid: broker.pid,
      grpc: `127.0.0.1:${server.port}`,
      mqtt: broker.url,
      ca: readFileSync(broker.caFile!, 'utf8'),
      bundle: server.ca.bundle().toSpiffeJson(),
      tokens,
      entryId: String(entry.id),
    }
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--client'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    child.stdin.end(JSON.stringify(job))
    let out = ''
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    const code = await new Promise<number | null>((r) => child.once('exit', r))
    if (code !== 0) throw new Error(`client exited ${code}`)
    const r = JSON.parse(out) as {
      attest: Record<string, number>
      batch: Record<string, number>
      attestCpu: Record<'grpc' | 'mqtt', Cpu>
      batchCpu: Record<'grpc' | 'mqtt', Cpu>
    }
    const row = (name: string, x: Record<string, number>) =>
      `| ${name} | ${x.grpc!.toFixed(1)} | ${x.mqtt!.toFixed(1)} | ${(x.mqtt! / x.grpc!).toFixed(2)}x |`
    console.log(`N = ${N} runs each, medians (ms)\n`)
    console.log('| case | gRPC (ms) | MQTT (ms) | MQTT / gRPC |\n|---|---|---|---|')
    console.log(row('join-token attestation', r.attest))
    console.log(row(`BatchNewX509SVID, ${BATCH} CSRs`, r.batch))
    const ms = (ns: number) => (ns / N / 1e6).toFixed(1)
    const total = (c: Cpu) => c.agent + c.server + c.broker
    const cpuRow = (name: string, x: Record<'grpc' | 'mqtt', Cpu>) =>
      `| ${name} | ${ms(x.grpc.agent)} / ${ms(x.grpc.server)} | ${ms(x.mqtt.agent)} / ${ms(x.mqtt.server)} / ${ms(x.mqtt.broker)} | ${(total(x.mqtt) / total(x.grpc)).toFixed(2)}x |`
    console.log('\nCPU per call (ms, means over the runs; broker: gRPC has none)\n')
    console.log(
      '| case | gRPC agent / server | MQTT agent / server / broker | MQTT / gRPC (all) |\n|---|---|---|---|',
    )
    console.log(cpuRow('join-token attestation', r.attestCpu))
    console.log(cpuRow(`BatchNewX509SVID, ${BATCH} CSRs`, r.batchCpu))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await clientOrMain<Job>(client, main)
