/**
 * The PCR-bound sealed cache (`[agent.cache] seal_pcrs`), with real swtpm, server and agent
 * processes: after a power cut (agent killed -9, swtpm restarted: PCRs reset to the same values)
 * the cache opens and serves at once; after a boot that measured something else (a selected PCR
 * extended) the TPM will not release the cache key: the cache is refused with a coded log line,
 * nothing is served from it while the server is down, and the agent fetches new SVIDs (sealed under
 * a key of its own, the first key file left as it was) once the server is back.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startCli } from '../helpers/cli-process.js'
import {
  cacheWritten,
  fetchServed,
  kill9,
  rebootableTpm,
  servingTpmAgent,
  startTpmServer,
  until,
} from '../helpers/offline.js'

const APP = 'spiffe://example.org/offline/pcr-app'

const pcrKeys = (agentDir: string) =>
  readdirSync(join(agentDir, 'cache-seal'))
    .filter((n) => n.endsWith('.tpmkey'))
    .sort()

test('seal_pcrs: the cache opens after a reboot with the same PCRs, and is refused (coded, nothing served) after a tampered boot, then refetched', async (t) => {
  const tpm = await rebootableTpm(t, 'pcr')
  const agentDir = join(tpm.dir, 'agent')
  const serverToml = 'default_x509_svid_ttl = "1h"\nagent_ttl = "1h"'
  const agentToml = '[agent.cache]\nseal_pcrs = [0, 2, 4, 7]'
  const setup = await servingTpmAgent(tpm.dir, tpm.sim, t, { serverToml, agentToml, spiffeId: APP })
  const { args, socket: sock, first: before } = setup
  let { server, agent } = setup
  const keys = pcrKeys(agentDir)
  assert.equal(keys.length, 1)
  assert.match(keys[0]!, /^cache-kek-pcr-[0-9a-f]{16}\.tpmkey$/)
  const firstKey = readFileSync(join(agentDir, 'cache-seal', keys[0]!))

  // A power cut with the server down: PCRs come back with the same values; the cache opens.
  await kill9(server)
  await kill9(agent)
  await tpm.reboot()
  agent = await startCli(args, t)
  const up = Date.now()
  const served = await fetchServed(sock)
  assert.equal(served.leaf, before.leaf, 'not the cached SVID after a clean reboot')
  assert.ok(Date.now() - up <= 1000, `served ${Date.now() - up} ms after the agent was up`)
  assert.match(agent.stderr(), /serving workload SVIDs from the sealed cache/)

  // A tampered boot: the same TPM, but PCR 4 measured something else.
  await kill9(agent)
  await tpm.reboot()
  execFileSync('tpm2_pcrextend', ['-T', tpm.sim.tcti, `4:sha256=${'00'.repeat(31)}01`])
  agent = await startCli(args, t)
  const refused = await until('the refusal log line', 10_000, async () =>
    agent
      .stderr()
      .split('\n')
      .find((l) => /could not be opened or verified; discarded/.test(l)),
  )
  const line = JSON.parse(refused) as Record<string, unknown>
  assert.equal(line.code, 'ERR_CACHE_PCR_MISMATCH')
  assert.match(String(line.error), /PCR 4\b/)
  assert.doesNotMatch(agent.stderr(), /serving workload SVIDs from the sealed cache/)
  // The server is down: nothing is served (no cached SVID leaks through), for a while.
  for (let i = 0; i < 3; i++) {
    await assert.rejects(fetchServed(sock, 1500), 'an SVID was served from a refused cache')
    await sleep(300)
  }

  // The server is back: new SVIDs, a new cache under a key for this boot's PCRs.
  server = await startTpmServer(tpm.dir, tpm.sim.ekCaBundle, t, serverToml, server.port)
  const fresh = await until('a refetched SVID', 60_000, () => fetchServed(sock))
  assert.equal(fresh.spiffeId, APP)
  assert.notEqual(fresh.leaf, before.leaf)
  await until('the cache rewritten under a second key', 60_000, async () =>
    pcrKeys(agentDir).length === 2 ? true : undefined,
  )
  await cacheWritten(agentDir)
  assert.deepEqual(
    readFileSync(join(agentDir, 'cache-seal', keys[0]!)),
    firstKey,
    'the first PCR key file was rewritten',
  )
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
})
