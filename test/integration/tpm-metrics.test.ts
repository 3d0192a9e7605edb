import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { AgentMetrics } from '../../src/agent/metrics.js'
import { TpmContext } from '../../src/tpm/context.js'
import { sample } from '../helpers/prom-text.js'

test('TPM command latency is observed at the connection choke point, against a real swtpm', async () => {
  await using sim = await startSwtpm()
  const metrics = new AgentMetrics({ trustDomain: 'example.org', version: 'test' })
  const stop = metrics.observeTpm()
  try {
    await using tpm = await TpmContext.open(sim.tcti)
    // 100 bytes: getRandom is asked in chunks of at most 32, so four commands.
    await tpm.getRandom(100)
    const text = await metrics.registry.metrics()
    const n = sample(text, 'spire_agent_tpm_command_elapsed_seconds_count', {
      command: 'getRandom',
      result: 'ok',
    })
    assert.equal(n, 4, text)
    const sum = sample(text, 'spire_agent_tpm_command_elapsed_seconds_sum', {
      command: 'getRandom',
      result: 'ok',
    })
    assert.ok(sum !== undefined && sum > 0 && sum < 30)
  } finally {
    stop()
  }
  // With the observer cleared, nothing more is counted (and no proxy is made).
  await using tpm = await TpmContext.open(sim.tcti)
  await tpm.getRandom(10)
  const after = await metrics.registry.metrics()
  assert.equal(
    sample(after, 'spire_agent_tpm_command_elapsed_seconds_count', {
      command: 'getRandom',
      result: 'ok',
    }),
    4,
  )
})
