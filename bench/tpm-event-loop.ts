/**
 * Requirement: TPM calls never block the event loop.
 *
 * Measures event-loop delay (p99, monitorEventLoopDelay) over three windows of the same length in
 * one run, against one swtpm:
 *   idle      the baseline: nothing running
 *   addon     TpmContext calls back to back (they run on the libuv thread pool)
 *   blocking  the same TPM work done synchronously (spawnSync tpm2_getrandom), to show what a
 *             blocking binding would cost
 * and prints ratios against the idle baseline. The requirement holds when addon/idle stays near 1.
 *
 * Run: npm run build && node dist/bench/tpm-event-loop.js
 */
import { spawnSync } from 'node:child_process'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { startSwtpm } from '../hardware-sim/swtpm.js'
import { TpmContext } from '../src/tpm/context.js'
import { summary } from './summary.js'

const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS ?? 2000)

async function measure(
  work: (until: number) => Promise<number>,
): Promise<{ p99: number; ops: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  // A steady trickle of timers, so delay is sampled even while work awaits.
  let ticking = true
  const ticker = (async () => {
    while (ticking) await sleep(1)
  })()
  const ops = await work(Date.now() + WINDOW_MS)
  ticking = false
  await ticker
  h.disable()
  return { p99: h.percentile(99) / 1e6, ops }
}

async function main(): Promise<void> {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await tpm.getRandom(8) // warm up the connection

  const idle = await measure(async (until) => {
    await sleep(until - Date.now())
    return 0
  })
  const addon = await measure(async (until) => {
    let n = 0
    while (Date.now() < until) {
      await tpm.getRandom(32)
      n++
    }
    return n
  })
  const blocking = await measure(async (until) => {
    let n = 0
    while (Date.now() < until) {
      spawnSync('tpm2_getrandom', ['-T', sim.tcti, '32'], { stdio: 'ignore' })
      n++
      await sleep(0)
    }
    return n
  })

  const ratio = (x: number) => (x / Math.max(idle.p99, 0.001)).toFixed(2)
  console.log(`window ${WINDOW_MS} ms each, event-loop delay p99 (ms):`)
  console.log(`  idle (baseline)        ${idle.p99.toFixed(2)}`)
  console.log(
    `  addon getRandom        ${addon.p99.toFixed(2)}  (${addon.ops} calls)  ratio ${ratio(addon.p99)}`,
  )
  console.log(
    `  blocking tpm2_getrandom ${blocking.p99.toFixed(2)}  (${blocking.ops} calls)  ratio ${ratio(blocking.p99)}`,
  )
  console.log(
    `RESULT addon/idle p99 ratio = ${ratio(addon.p99)} (blocking/idle = ${ratio(blocking.p99)})`,
  )
  summary({
    bench: 'tpm-event-loop',
    case: 'event-loop delay p99 during TPM calls / idle',
    value: addon.p99 / Math.max(idle.p99, 0.001),
    op: '>=',
    bound: 0,
    unit: 'x',
  })
}

await main()
