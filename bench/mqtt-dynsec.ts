/**
 * Cost of broker authorization on Mosquitto's dynamic security plugin: grantAgent (role + client,
 * four to six admin round trips) and revokeAgent for BENCH_N agents against one local broker with
 * TLS, and how the plugin's JSON state (rewritten on every change) grows. Printed: grants/s, the
 * median and p99 of one grant at the start and at the end (the file is larger then), revokes/s,
 * the state file size, and the broker's CPU seconds (from /proc) over the run.
 *
 * Run: npm run build && node dist/bench/mqtt-dynsec.js   (BENCH_N agents, default 500)
 */
import { readFileSync, statSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { startMosquitto } from '../hardware-sim/mosquitto.js'
import { MosquittoDynSec } from '../src/transport/mqtt/dynsec.js'
import { readPasswordFile } from '../src/transport/mqtt/dynsec-client.js'

const N = Number(process.env.BENCH_N ?? 500)

function cpuSeconds(pid: number): number {
  // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks (100/s on Linux).
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

async function main(): Promise<void> {
  await using broker = await startMosquitto({ tls: true, dynsec: true })
  const d = broker.dynsec!
  const dynsec = await MosquittoDynSec.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    ca: readFileSync(broker.caFile!),
    timeoutMs: 60_000,
  })
  try {
    await dynsec.ensureRoles()
    const ids = Array.from({ length: N }, (_, i) => `spiffe://example.org/spire/agent/bench/${i}`)
    const cpu0 = cpuSeconds(broker.pid)
    const each: number[] = []
    const t0 = performance.now()
    for (const id of ids) {
      const s = performance.now()
      await dynsec.grantAgent(id)
      each.push(performance.now() - s)
    }
    const grantMs = performance.now() - t0
    const size = statSync(d.stateFile).size
    const tenth = Math.max(1, Math.floor(N / 10))
    const first = each.slice(0, tenth).sort((a, b) => a - b)
    const last = each.slice(-tenth).sort((a, b) => a - b)
    const rotate0 = performance.now()
    await dynsec.grantAgent(ids[0]!)
    const rotateMs = performance.now() - rotate0
    const r0 = performance.now()
    for (const id of ids) await dynsec.revokeAgent(id)
    const revokeMs = performance.now() - r0
    const cpu = cpuSeconds(broker.pid) - cpu0
    console.log(
      JSON.stringify({
        agents: N,
        grants_per_s: Math.round((N / grantMs) * 1000),
        grant_ms_first_tenth: {
          p50: +quantile(first, 0.5).toFixed(1),
          p99: +quantile(first, 0.99).toFixed(1),
        },
        grant_ms_last_tenth: {
          p50: +quantile(last, 0.5).toFixed(1),
          p99: +quantile(last, 0.99).toFixed(1),
        },
        rotate_ms_at_n: +rotateMs.toFixed(1),
        revokes_per_s: Math.round((N / revokeMs) * 1000),
        state_file_bytes_at_n: size,
        broker_cpu_s: +cpu.toFixed(2),
      }),
    )
  } finally {
    await dynsec.close()
  }
}

await main()
