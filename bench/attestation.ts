/**
 * TPM node attestation, end to end against swtpm, against its own parts measured in the same run.
 *
 * 1. End-to-end latency, agent start to agent SVID: open a TpmContext, create the TPM-resident
 *    agent key (TpmKeyManager), GrpcNodeClient.attestAgent with tpmAgentAttestor against a real server
 *    ([plugins.NodeAttestor.tpm] trusting the swtpm's EK CA bundle) over loopback gRPC with TLS,
 *    the agent trusting the server's published bundle (as trust_bundle_path sets it up). The
 *    server runs in its own process (bench/server-proc.ts), as agent and server never share one in
 *    a fleet; BENCH_SERVER_INPROC=1 runs it in this process instead (the figures before 2026-12-03),
 *    where the server's CPU and the agent's take turns on one thread. Median of BENCH_N runs; a warm-up run first creates the AK, so the
 *    timed runs are agent restarts that reuse it (as real agents do), each with a new agent key.
 * 2. The floor (attestation-floor.ts): the TPM commands that attestation needs, each once, back to
 *    back on the same swtpm, FLOOR_RUNS times right after each end-to-end run (rounds alternate,
 *    so load from other work falls on both). The overhead beyond the TPM commands (protocol, TLS,
 *    CSR, server checks and storage, files, TPM work the agent repeats) is, per round, the e2e
 *    time minus that round's floor (the sum of its steps' medians); printed: the median round.
 * 3. Server verification throughput on one core, no TPM (attestation-verify.ts).
 *
 * Run: npm run build && node dist/bench/attestation.js   (BENCH_N rounds, default 10)
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSwtpm } from '../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../src/attestors/tpm/agent.js'
import { DEFAULT_PCR_SELECTION, parseTpmServerConfig } from '../src/attestors/tpm/server.js'
import { silentLog } from '../src/common/log.js'
import { type TpmKey, TpmKeyManager } from '../src/keymanager/tpm.js'
import { adminCall } from '../src/server/admin-client.js'
import { parseServerConfig } from '../src/server/config.js'
import { type RunningServer, startServer } from '../src/server/server.js'
import { TrustBundle } from '../src/spiffe/bundle.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { TpmContext } from '../src/tpm/context.js'
import { parsePcrSpec } from '../src/tpm/structures/pcr.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { tpmFloorRun } from './attestation-floor.js'
import { recordExchange, verificationRates } from './attestation-verify.js'
import { forkProc } from './fork-proc.js'
import { summary } from './summary.js'

const N = Number(process.env.BENCH_N ?? 10)
const IN_PROCESS = process.env.BENCH_SERVER_INPROC === '1'
// The floor is cheap on swtpm: a few runs per round for a stable median.
const FLOOR_RUNS = 3
const td = TrustDomain.parse('example.org')

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-attest-'))
  try {
    await using sim = await startSwtpm()
    const agentDir = join(dir, 'agent')
    const sel = parsePcrSpec(DEFAULT_PCR_SELECTION)

    // 1. End to end, against a real server in this process; 2. the floor after each run.
    const e2e: number[] = []
    // This process's CPU per run (agent and server both): what the load of other work cannot
    // inflate, unlike the wall clock.
    const cpuMs: number[] = []
    const floors: number[] = []
    const overheads: number[] = []
    const steps = new Map<string, number[]>()
    let firstMs = 0
    // The server: its own process (default) or this one. serverCpuUs: its CPU so far, µs.
    const tpmToml = `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(sim.ekCaBundle)}\n`
    let inproc: RunningServer | undefined
    let proc: ReturnType<typeof forkProc> | undefined
    let address: string
    if (IN_PROCESS) {
      const config = parseServerConfig(
        `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nca_ttl = "24h"\n${tpmToml}`,
        join(dir, 'server.conf'),
      )
      inproc = await startServer(config, { log: silentLog })
      address = `127.0.0.1:${inproc.port}`
    } else {
      proc = forkProc('server-proc.js', { env: { BENCH_SERVER_TOML: tpmToml }, profile: true })
      address = String((await proc.ready).address)
    }
    // The trust bundle the agent starts with, as production sets it up (trust_bundle_path, not
    // insecure_bootstrap): the agent then verifies the server's chain on every connection, and
    // makes its channel during keygen (GrpcNodeClient.warmUp), not in its constructor.
    const published = proc
      ? ((await proc.ask({ op: 'admin', method: 'GET', path: '/v1/bundle?format=spiffe' }))
          .result as Record<string, unknown>)
      : await adminCall(inproc!.adminSocket, 'GET', '/v1/bundle?format=spiffe')
    const bundle = TrustBundle.fromSpiffeJson(td, String(published.bundle))
    const serverCpuUs = async () => (proc ? Number((await proc.ask({ op: 'cpu' })).us) : 0)
    const serverCpuMs: number[] = []
    // This process's CPU for one floor run: the TSS marshalling, sessions and I/O of the same
    // commands, which the e2e CPU figure includes too.
    const floorCpuMs: number[] = []
    try {
      for (let i = 0; i <= N; i++) {
        const s0 = await serverCpuUs()
        const c0 = process.cpuUsage()
        const t = performance.now()
        await using tpm = await TpmContext.open(sim.tcti)
        // As the agent wires them (src/agent/plugins.ts): the attestor takes over keygen's SRK.
        const keys = new TpmKeyManager(tpm, join(dir, `keys-${i}`))
        let key: TpmKey | undefined
        const attestor = tpmAgentAttestor({ tpm, dataDir: agentDir, agentKey: () => key! })
        if (process.env.BENCH_NO_SRK_HANDOFF !== '1') {
          keys.handOffSrk = (srk) => attestor.adoptSrk(srk)
        }
        const client = new GrpcNodeClient({ address, trustDomain: td, bundle })
        try {
          // As the agent does (AgentIdentity.attest): the connection is set up during keygen.
          if (process.env.BENCH_NO_WARMUP !== '1') client.warmUp()
          // As the agent does: the key file is written while the attestation runs.
          const made = await keys.generateKeyEarly('agent', 'ec-p256')
          key = made.key
          const r = await client.attestAgent(attestor, key)
          await made.stored
          const ms = performance.now() - t
          const c = process.cpuUsage(c0)
          const sc = (await serverCpuUs()) - s0
          if (i > 0) {
            cpuMs.push((c.user + c.system) / 1000)
            serverCpuMs.push(sc / 1000)
          }
          if (!r.svid.spiffeId.startsWith('spiffe://example.org/spire/agent/tpm/')) {
            throw new Error(`unexpected agent ID ${r.svid.spiffeId}`)
          }
          if (i === 0) firstMs = ms
          else e2e.push(ms)
        } finally {
          client.close()
        }
        // Every handle the attestation loaded is flushed: nothing but the context is left.
        const left = await tpm.loadedTransientCount()
        if (left !== 0) throw new Error(`${left} transient objects left after an attestation`)
        if (i === 0) continue
        const akBlob = {
          private: new Uint8Array(readFileSync(join(agentDir, 'ak.priv'))),
          public: new Uint8Array(readFileSync(join(agentDir, 'ak.pub'))),
        }
        const round = new Map<string, number[]>()
        for (let k = 0; k < FLOOR_RUNS; k++) {
          const f0 = process.cpuUsage()
          const run = await tpmFloorRun(tpm, akBlob, sel)
          const fc = process.cpuUsage(f0)
          floorCpuMs.push((fc.user + fc.system) / 1000)
          for (const [name, ms] of run.steps) round.set(name, [...(round.get(name) ?? []), ms])
        }
        let floor = 0
        for (const [name, xs] of round) {
          floor += median(xs)
          steps.set(name, [...(steps.get(name) ?? []), ...xs])
        }
        floors.push(floor)
        overheads.push(e2e[e2e.length - 1]! - floor)
      }
    } finally {
      await inproc?.close()
      proc?.quit()
    }
    const e2eMs = median(e2e)
    const floorMs = median(floors)
    const overhead = median(overheads)
    const openMs: number[] = []
    for (let i = 0; i < 20; i++) {
      const t = performance.now()
      await (await TpmContext.open(sim.tcti)).close()
      openMs.push(performance.now() - t)
    }

    // 3. Server verification on recorded evidence, one core.
    const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
    const rec = await recordExchange(sim.tcti, cfg, agentDir, join(dir, 'keys-rec'))
    const v = verificationRates(cfg, rec)

    const f = (ms: number) => ms.toFixed(2).padStart(8)
    const range = (xs: number[]) => `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}`
    console.log(
      `end-to-end TPM attestation, agent start to agent SVID (swtpm, in-process server, ` +
        `loopback gRPC/TLS, RSA EK, ECC P-256 AK and agent key, ${DEFAULT_PCR_SELECTION}; ` +
        `server ${IN_PROCESS ? 'in this process' : 'in its own process'}):`,
    )
    console.log(`  first start (cold, creates the AK)  ${f(firstMs)} ms`)
    console.log(
      `  restart, median of ${String(N).padEnd(3)}              ${f(e2eMs)} ms   ` +
        `(min ${Math.min(...e2e).toFixed(2)}, max ${Math.max(...e2e).toFixed(2)})`,
    )
    console.log(
      `  this process's CPU per restart (${IN_PROCESS ? 'agent + server' : 'agent'}), median ` +
        `${median(cpuMs).toFixed(2)} ms (${range(cpuMs)})`,
    )
    console.log(
      `  this process's CPU per floor run (the TPM commands alone), median ` +
        `${median(floorCpuMs).toFixed(2)} ms (${range(floorCpuMs)})`,
    )
    if (!IN_PROCESS) {
      console.log(
        `  the server process's CPU per restart, median ${median(serverCpuMs).toFixed(2)} ms ` +
          `(${range(serverCpuMs)})`,
      )
    }
    console.log(
      `TPM commands one attestation needs, each once, back to back (median of ` +
        `${FLOOR_RUNS * N} runs, ${FLOOR_RUNS} after each e2e run), ms:`,
    )
    for (const [name, xs] of steps) console.log(`  ${name.padEnd(40)} ${f(median(xs))}`)
    console.log(
      `  ${'floor (sum of the steps), median round'.padEnd(40)} ${f(floorMs)}   (${range(floors)})`,
    )
    console.log(`  (TpmContext open + close, not a TPM command: ${median(openMs).toFixed(2)} ms)`)
    console.log('server verification of recorded evidence, one core:')
    console.log(`  full attestation checks   ${Math.round(v.full).toString().padStart(7)}/s`)
    console.log(`    first of a TPM (no cached EK chain) ${Math.round(v.cold)}/s`)
    console.log('    its main parts, each timed alone:')
    for (const [name, r] of Object.entries(v.parts)) {
      console.log(
        `    ${name.padEnd(23)} ${Math.round(r).toString().padStart(7)}/s  ` +
          `(${(1e6 / r).toFixed(0)} µs)`,
      )
    }
    console.log(`  bare ECDSA P-256 verify   ${Math.round(v.bare).toString().padStart(7)}/s`)
    console.log(
      `RESULT end-to-end overhead beyond the TPM commands = ${overhead.toFixed(2)} ms, median ` +
        `round (rounds ${range(overheads)}; goal <= 15); e2e ${e2eMs.toFixed(2)} ms against a floor ` +
        `of ${floorMs.toFixed(2)} ms, ratio ${(e2eMs / floorMs).toFixed(2)}x`,
    )
    console.log(
      `RESULT server verification = ${Math.round(v.full)} attestations/s on one core; ` +
        `ratio to bare ECDSA verify = ${(v.full / v.bare).toFixed(3)}; first of a TPM ${Math.round(v.cold)}/s`,
    )
    summary({
      bench: 'attestation',
      case: 'server TPM attestation verification, one core (cached EK chain), /s',
      value: v.full,
      op: '>=',
      bound: 1000,
      unit: '/s',
    })
    summary({
      bench: 'attestation',
      case: 'end-to-end TPM attestation, CPU per restart (agent + server processes), ms',
      value: median(cpuMs.map((c, i) => c + (serverCpuMs[i] ?? 0))),
      op: '>=',
      bound: 0,
      unit: 'ms',
    })
    summary({
      bench: 'attestation',
      case: 'end-to-end TPM attestation overhead beyond TPM commands, ms',
      value: overhead,
      op: '<=',
      bound: 15,
      unit: 'ms',
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
