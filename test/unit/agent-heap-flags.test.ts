/**
 * The agent's V8 flags (src/agent/heap-flags.ts): its systemd unit passes exactly those, and they
 * do what they are there for, in a real node process started with them as the unit starts the
 * agent (NODE_OPTIONS): after a burst of short-lived allocation the young generation stays small.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { AGENT_V8_FLAGS } from '../../src/agent/heap-flags.js'
import { packageRoot } from '../../src/common/package-root.js'

test('the agent unit sets NODE_OPTIONS to the agent V8 flags', () => {
  const unit = readFileSync(
    join(packageRoot(), 'packaging', 'systemd', 'spiffe-edge-agent.service'),
    'utf8',
  )
  const lines = unit.split('\n').filter((l) => l.startsWith('Environment=NODE_OPTIONS='))
  assert.deepEqual(lines, [`Environment=NODE_OPTIONS=${AGENT_V8_FLAGS.join(' ')}`])
})

test('with the agent flags a burst of allocation leaves a small young generation', () => {
  const burst = `const v8 = require('node:v8'); let k = []
for (let i = 0; i < 2e6; i++) { k.push({ a: i, b: 'x' + i }); if (k.length > 50000) k = [] }
const s = v8.getHeapSpaceStatistics().find((x) => x.space_name === 'new_space')
process.stdout.write(String(s.space_size))`
  const run = (nodeOptions: string) =>
    Number(
      execFileSync(process.execPath, ['-e', burst], {
        env: { ...process.env, NODE_OPTIONS: nodeOptions },
        encoding: 'utf8',
      }),
    )
  const MiB = 2 ** 20
  const capped = run(AGENT_V8_FLAGS.join(' '))
  const uncapped = run('')
  assert.ok(capped <= 6 * MiB, `young generation ${capped / MiB} MiB with the agent flags`)
  // The burst is big enough to grow an uncapped one: the cap is what keeps it small.
  assert.ok(uncapped >= 4 * capped, `uncapped ${uncapped / MiB} MiB vs capped ${capped / MiB} MiB`)
})
