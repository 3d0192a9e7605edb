import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { startAgent } from '../../src/agent/agent.js'
import { parseAgentConfig } from '../../src/agent/config.js'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import { silentLog } from '../../src/common/log.js'
import { startTestServer } from '../helpers/server.js'

async function until(cond: () => Promise<boolean> | boolean, what: string, ms = 30_000) {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

test('a running TPM agent reports NOT_SERVING while swtpm is down, with a TPM error, and recovers after its restart', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-restart-'))
  let sim = await startSwtpm({ stateDir })
  const port = sim.port
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(async () => {
    await sim.stop()
    rmSync(stateDir, { recursive: true, force: true })
    rmSync(dir, { recursive: true, force: true })
  })
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(sim.ekCaBundle)}`,
  })
  const config = parseAgentConfig(
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${s.address}"\ndata_dir = "${dir}"\n` +
      `socket_path = "${join(dir, 'api.sock')}"\ninsecure_bootstrap = true\nsync_interval = "1s"\n` +
      `[plugins.NodeAttestor.tpm]\ntcti = "${sim.tcti}"\n[plugins.WorkloadAttestor.unix]\n`,
    join(dir, 'agent.conf'),
  )
  await using agent = await startAgent(config, { log: silentLog })
  const c = workloadClient(`unix://${agent.socketPath}`)
  t.after(() => c.close())
  assert.equal(await c.health(), 'SERVING')

  await sim.stop()
  await until(async () => (await c.health()) === 'NOT_SERVING', 'NOT_SERVING while the TPM is down')
  // The agent says it is the TPM (a TPM code), not the server.
  await until(() => agent.manager.health().lastError !== undefined, 'a failed sync')
  assert.match(agent.manager.health().lastError!, /TPM|tcti|swtpm|socket|connect/i)

  sim = await startSwtpm({ stateDir, port })
  await until(async () => (await c.health()) === 'SERVING', 'SERVING after the TPM is back')
  await until(() => agent.manager.health().failures === 0, 'a successful sync after the restart')
})
