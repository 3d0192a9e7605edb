/**
 * One MQTT join-token attestation and one 100-CSR batch, traced: every MQTT packet the agent and
 * the server send and receive (mqtt.js packetsend / packetreceive) and every datastore call the
 * server makes, with wall-clock timestamps (performance.timeOrigin + now(), comparable across
 * processes), merged into one timeline; the broker's part is what lies between a PUBLISH leaving
 * one side and arriving on the other. With BENCH_STRACE=1 the broker's socket reads and writes are
 * added (strace -ttt on the mosquitto process; strace slows the broker, so its gaps grow).
 *
 * Run: npm run build && node dist/bench/mqtt-trace.js
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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
import { clientOrMain } from './client-entry.js'
import { benchToken, mqttServerConfig } from './mqtt-common.js'
import { type Ev, events, mark, print, traceDatastore, traceMqtt } from './trace-hooks.js'

const RUNS = Number(process.env.BENCH_N ?? 5)
const td = TrustDomain.parse('example.org')
interface Job {
  mqtt: string
  grpc: string
  ca: string
  bundle: string
  tokens: string[]
  grpcTokens: string[]
  entryId: string
}

async function client(job: Job): Promise<void> {
  traceMqtt('agent')
  const bundle = TrustBundle.fromSpiffeJson(td, job.bundle)
  const mqtt = new MqttNodeClient({
    url: job.mqtt,
    trustDomain: td,
    bundle,
    topicPrefix: 'spiffe-edge',
    ca: Buffer.from(job.ca),
  })
  const keys = new MemoryKeyManager()
  const csrs: Uint8Array[] = []
  for (let i = 0; i < 100; i++)
    csrs.push(await createCsr(await keys.generateKey(`w${i}`, 'ec-p256')))
  let auth: Parameters<MqttNodeClient['call']>[2]
  for (let i = 0; i <= RUNS; i++) {
    const key = await keys.generateKey(`a${i}`, 'ec-p256')
    mark('agent', `attest ${i} start`)
    const r = await mqtt.attestAgent(joinTokenAgentAttestor(job.tokens[i]!), key)
    mark('agent', `attest ${i} end`)
    auth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
  }
  for (let i = 0; i <= RUNS; i++) {
    const grpc = new GrpcNodeClient({ address: job.grpc, trustDomain: td, bundle })
    const key = await keys.generateKey(`g${i}`, 'ec-p256')
    mark('agent', `grpc attest ${i} start`)
    await grpc.attestAgent(joinTokenAgentAttestor(job.grpcTokens[i]!), key)
    mark('agent', `grpc attest ${i} end`)
    grpc.close()
  }
  for (let i = 0; i <= RUNS; i++) {
    mark('agent', `batch ${i} start`)
    await mqtt.call(
      'BatchNewX509SVID',
      { params: csrs.map((csr) => ({ entryId: job.entryId, csr })) },
      auth,
    )
    mark('agent', `batch ${i} end`)
  }
  const grpc = new GrpcNodeClient({ address: job.grpc, trustDomain: td, bundle })
  const gkey = await keys.generateKey('gb', 'ec-p256')
  const g = await grpc.attestAgent(joinTokenAgentAttestor(job.grpcTokens[RUNS + 1]!), gkey)
  const gauth = { spiffeId: g.svid.spiffeId, chain: g.svid.certChain, signer: gkey }
  for (let i = 0; i <= RUNS; i++) {
    mark('agent', `grpc batch ${i} start`)
    await grpc.call(
      'BatchNewX509SVID',
      { params: csrs.map((csr) => ({ entryId: job.entryId, csr })) },
      gauth,
    )
    mark('agent', `grpc batch ${i} end`)
  }
  grpc.close()
  mqtt.close()
  process.stdout.write(`${JSON.stringify(events)}\n`)
}

function strace(pid: number, out: string): ChildProcess {
  return spawn('strace', ['-ttt', '-p', String(pid), '-e', 'trace=read,write', '-o', out], {
    stdio: 'ignore',
  })
}

function parseStrace(file: string): Ev[] {
  const evs: Ev[] = []
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^(\d+\.\d+) (read|write)\((\d+), .*= (\d+)$/.exec(line)
    if (m) evs.push({ t: Number(m[1]) * 1000, who: 'broker', what: `${m[2]} fd${m[3]} ${m[4]}B` })
  }
  return evs
}

async function main(): Promise<void> {
  traceMqtt('server')
  traceDatastore()
  await using broker = await startMosquitto({ tls: true })
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-mqtt-trace-'))
  try {
    const config = mqttServerConfig(broker, dir, `[plugins.NodeAttestor.join_token]\n`)
    await using server = await startServer(config, { log: silentLog })
    const token = () => benchToken(server.adminSocket)
    const tokens: string[] = []
    const grpcTokens: string[] = []
    for (let i = 0; i <= RUNS; i++) {
      tokens.push(await token())
      grpcTokens.push(await token())
    }
    grpcTokens.push(await token())
    const entry = await adminCall(server.adminSocket, 'POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/bench/w',
      parent_id: 'spiffe://example.org/bench',
      selectors: [{ type: 'unix', value: 'uid:1' }],
    })
    const job: Job = {
      mqtt: broker.url,
      grpc: `127.0.0.1:${server.port}`,
      ca: readFileSync(broker.caFile!, 'utf8'),
      bundle: server.ca.bundle().toSpiffeJson(),
      tokens,
      grpcTokens,
      entryId: String(entry.id),
    }
    const straceOut = join(dir, 'broker.strace')
    const st = process.env.BENCH_STRACE === '1' ? strace(broker.pid, straceOut) : undefined
    if (st) await new Promise((r) => setTimeout(r, 500))
    events.length = 0
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
    if (st) {
      st.kill('SIGINT')
      await new Promise((r) => st.once('exit', r))
    }
    const all = [...events, ...(JSON.parse(out) as Ev[]), ...(st ? parseStrace(straceOut) : [])]
    all.sort((x, y) => x.t - y.t)
    print(all, `attest ${RUNS} start`, `attest ${RUNS} end`)
    print(all, `grpc attest ${RUNS} start`, `grpc attest ${RUNS} end`)
    print(all, `batch ${RUNS} start`, `batch ${RUNS} end`)
    print(all, `grpc batch ${RUNS} start`, `grpc batch ${RUNS} end`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await clientOrMain<Job>(client, main)
