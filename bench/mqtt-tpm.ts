/**
 * TPM attestation (swtpm) over MQTT v5 through a local Mosquitto (TLS) against the same over gRPC
 * (TLS), the agent in its own process, the two transports alternating on one agent (one EK, one
 * AK reused, as restarts do; a new TPM-resident agent key per attempt). MQTT takes two exchanges:
 * the params (answered with the credential challenge, its round put in attest_rounds) and the
 * challenge answer (the round taken once, the node saved); each frame claimed in seen_nonces.
 * Timed: attestAgent only (each attempt on a new gRPC client / a new MQTT bootstrap session).
 * Printed: medians of BENCH_N runs (default 10; one warm-up each, not timed) and the mean CPU per
 * attestation of the agent, the server and the broker (every thread's schedstat) and of swtpm.
 *
 * With BENCH_TRACE=1, also the timeline of the last MQTT attestation (bench/trace-hooks.ts).
 *
 * Run: npm run build && node dist/bench/mqtt-tpm.js
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startMosquitto } from '../hardware-sim/mosquitto.js'
import { startSwtpm } from '../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../src/attestors/tpm/agent.js'
import { silentLog } from '../src/common/log.js'
import { TpmKeyManager } from '../src/keymanager/tpm.js'
import { startServer } from '../src/server/server.js'
import { TrustBundle } from '../src/spiffe/bundle.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { TpmContext } from '../src/tpm/context.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { MqttNodeClient } from '../src/transport/mqtt/client.js'
import type { NodeClient } from '../src/transport/node-client.js'
import { clientOrMain } from './client-entry.js'
import { cpuNs, mqttServerConfig } from './mqtt-common.js'
import { type Ev, events, mark, print, traceDatastore, traceMqtt } from './trace-hooks.js'

const N = Number(process.env.BENCH_N ?? 10)
const td = TrustDomain.parse('example.org')
const TRACE = process.env.BENCH_TRACE === '1'

interface Job {
  pids: { server: number; broker: number; swtpm: number }
  tcti: string
  grpc: string
  mqtt: string
  ca: string
  bundle: string
  dir: string
}

type Cpu = Record<'agent' | 'server' | 'broker' | 'swtpm', number>

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

async function client(job: Job): Promise<void> {
  if (TRACE) traceMqtt('agent')
  const bundle = TrustBundle.fromSpiffeJson(td, job.bundle)
  const mqtt = new MqttNodeClient({
    url: job.mqtt,
    trustDomain: td,
    bundle,
    topicPrefix: 'spiffe-edge',
    ca: Buffer.from(job.ca),
  })
  await using tpm = await TpmContext.open(job.tcti)
  const keys = new TpmKeyManager(tpm, join(job.dir, 'keys'))
  const sample = (): Cpu => ({
    agent: cpuNs('self'),
    server: cpuNs(job.pids.server),
    broker: cpuNs(job.pids.broker),
    swtpm: cpuNs(job.pids.swtpm),
  })
  const ms: Record<'grpc' | 'mqtt', number[]> = { grpc: [], mqtt: [] }
  const cpu: Record<'grpc' | 'mqtt', Cpu> = {
    grpc: { agent: 0, server: 0, broker: 0, swtpm: 0 },
    mqtt: { agent: 0, server: 0, broker: 0, swtpm: 0 },
  }
  for (let i = 0; i <= N; i++) {
    for (const t of ['grpc', 'mqtt'] as const) {
      const key = await keys.generateKey(`agent-${t}-${i}`, 'ec-p256')
      const attestor = tpmAgentAttestor({
        tpm,
        dataDir: join(job.dir, 'agent'),
        agentKey: () => key,
      })
      const c0 = sample()
      events.length = 0
      mark('agent', 'attest start')
      const start = performance.now()
      const c: NodeClient =
        t === 'grpc' ? new GrpcNodeClient({ address: job.grpc, trustDomain: td, bundle }) : mqtt
      try {
        const r = await c.attestAgent(attestor, key)
        if (!r.svid.spiffeId.includes('/agent/tpm/')) throw new Error(r.svid.spiffeId)
      } finally {
        if (t === 'grpc') c.close()
      }
      mark('agent', 'attest end')
      if (i === 0) continue
      ms[t].push(performance.now() - start)
      const c1 = sample()
      for (const k of ['agent', 'server', 'broker', 'swtpm'] as const) cpu[t][k] += c1[k] - c0[k]
    }
  }
  mqtt.close()
  const trace = TRACE ? events : []
  process.stdout.write(
    `${JSON.stringify({ grpc: median(ms.grpc), mqtt: median(ms.mqtt), cpu, events: trace })}\n`,
  )
}

async function main(): Promise<void> {
  if (TRACE) {
    traceMqtt('server')
    traceDatastore()
  }
  await using sim = await startSwtpm()
  await using broker = await startMosquitto({ tls: true })
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-mqtt-tpm-'))
  try {
    const config = mqttServerConfig(
      broker,
      dir,
      `[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(sim.ekCaBundle)}\n`,
    )
    await using server = await startServer(config, { log: silentLog })
    const job: Job = {
      pids: { server: process.pid, broker: broker.pid, swtpm: sim.pid },
      tcti: sim.tcti,
      grpc: `127.0.0.1:${server.port}`,
      mqtt: broker.url,
      ca: readFileSync(broker.caFile!, 'utf8'),
      bundle: server.ca.bundle().toSpiffeJson(),
      dir,
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
      grpc: number
      mqtt: number
      cpu: Record<string, Cpu>
      events: Ev[]
    }
    const f = (ns: number) => (ns / N / 1e6).toFixed(1)
    const all = (c: Cpu) => c.agent + c.server + c.broker + c.swtpm
    console.log(`N = ${N} runs each, medians (ms); CPU per attestation, means (ms)\n`)
    console.log(
      '| transport | wall (ms) | agent CPU | server CPU | broker CPU | swtpm CPU |\n|---|---|---|---|---|---|',
    )
    for (const t of ['grpc', 'mqtt'] as const) {
      const c = r.cpu[t]!
      console.log(
        `| ${t} | ${r[t].toFixed(1)} | ${f(c.agent)} | ${f(c.server)} | ${f(c.broker)} | ${f(c.swtpm)} |`,
      )
    }
    if (TRACE) {
      const last = r.events[0]?.t ?? 0
      const all = [...events.filter((e) => e.t >= last), ...r.events].sort((x, y) => x.t - y.t)
      print(all, 'attest start', 'attest end')
    }
    console.log(
      `\nMQTT / gRPC: wall ${(r.mqtt / r.grpc).toFixed(2)}x, CPU (all four) ${(all(r.cpu.mqtt!) / all(r.cpu.grpc!)).toFixed(2)}x`,
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await clientOrMain<Job>(client, main)
