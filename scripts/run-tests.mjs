// Runs the compiled node:test files of the given levels (unit, integration) in one runner, so CI
// reads one summary. Explicit file lists keep this identical on Node 20, 22 and 24 (whose --test
// argument handling differs).
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

const levels = process.argv.slice(2)
if (levels.length === 0) levels.push('unit', 'integration')
const files = []
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) walk(p)
    else if (name.endsWith('.test.js')) files.push(p)
  }
}
// Workspace packages (packages/<name>/test/<level>) compile into the same dist tree.
const packages = existsSync(join('dist', 'packages'))
  ? readdirSync(join('dist', 'packages')).sort()
  : []
for (const level of levels) {
  walk(join('dist', 'test', level))
  for (const p of packages) {
    const dir = join('dist', 'packages', p, 'test', level)
    if (existsSync(dir)) walk(dir)
  }
}
if (files.length === 0) {
  console.error(
    `run-tests: no compiled tests under dist/test/{${levels.join(',')}}; run npm run build`,
  )
  process.exit(1)
}
// Integration tests each own their simulators on their own ports, so files run in parallel.
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=4', ...files], {
  stdio: 'inherit',
})
process.exit(r.status ?? 1)
