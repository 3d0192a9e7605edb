/**
 * `npm run bench`: every bench in turn (each its own process, output passed through), then one
 * table of the SUMMARY lines they print, with the goal beside each figure. Exits 0 whether or
 * not goals are met: on a shared machine the figures are evidence, not a gate.
 *
 * BENCH_SKIP=name,name leaves benches out (e.g. BENCH_SKIP=tpm,attestation without swtpm,
 * BENCH_SKIP=pkcs11 without SoftHSM2, BENCH_SKIP=offline-start without swtpm).
 */
import { spawn } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const BENCHES = [
  'workload-latency',
  'server-sign',
  'pkcs11',
  'attestation',
  'tpm-event-loop',
  'tpm',
  'offline-start',
]
const skip = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean))

interface Row {
  bench: string
  case: string
  value: number
  op: string
  bound: number
  unit: string
  met: boolean
}

function run(name: string): Promise<{ rows: Row[]; code: number | null; ms: number }> {
  const t = performance.now()
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(here, `${name}.js`)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const rows: Row[] = []
    let buf = ''
    child.stdout.on('data', (d: Buffer) => {
      process.stdout.write(d)
      buf += d.toString('utf8')
      let nl = buf.indexOf('\n')
      while (nl >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        if (line.startsWith('SUMMARY ')) rows.push(JSON.parse(line.slice(8)) as Row)
        nl = buf.indexOf('\n')
      }
    })
    child.on('close', (code) => resolve({ rows, code, ms: performance.now() - t }))
  })
}

const fmt = (r: Row) =>
  r.unit === 'x'
    ? `${r.value.toFixed(2)}x`
    : r.unit === '/s'
      ? `${Math.round(r.value)}/s`
      : r.unit === 'ms'
        ? `${r.value.toFixed(1)} ms`
        : r.value.toFixed(2)

const all: Row[] = []
const failed: string[] = []
const t0 = performance.now()
for (const b of BENCHES) {
  if (skip.has(b)) continue
  console.log(`\n=== ${b} ===`)
  const r = await run(b)
  console.log(`=== ${b}: ${(r.ms / 1000).toFixed(0)} s, exit ${r.code} ===`)
  if (r.code !== 0) failed.push(b)
  all.push(...r.rows)
}
console.log(`\nSummary (${((performance.now() - t0) / 1000).toFixed(0)} s in all)`)
const w = Math.max(...all.map((r) => r.case.length), 10)
console.log(`${'bench'.padEnd(17)}${'case'.padEnd(w + 2)}${'figure'.padStart(10)}  goal        met`)
for (const r of all) {
  const goal =
    r.bound === 0 && r.op === '>='
      ? '(reported)'
      : `${r.op} ${r.bound}${r.unit === 'x' ? 'x' : r.unit ? ` ${r.unit}` : ''}`
  const met = r.bound === 0 && r.op === '>=' ? '' : r.met ? 'yes' : 'NO'
  console.log(
    `${r.bench.padEnd(17)}${r.case.padEnd(w + 2)}${fmt(r).padStart(10)}  ${goal.padEnd(12)}${met}`,
  )
}
if (failed.length > 0) console.log(`benches that failed to run: ${failed.join(', ')}`)
