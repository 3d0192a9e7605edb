/**
 * Offline-first agent, real processes and real swtpm: a reboot during an outage (server down,
 * agent killed -9, swtpm restarted) serves the same SVIDs at once from the sealed cache, and
 * rotation resumes when the server is back; an outage longer than the agent SVID's life, with a
 * reboot in the middle, ends with the agent re-attesting by itself and no workload gap.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { startCli } from '../helpers/cli-process.js'
import {
  fetchServed,
  kill9,
  rebootableTpm,
  servingTpmAgent,
  startTpmServer,
  until,
} from '../helpers/offline.js'

const APP = 'spiffe://example.org/offline/app'

test('reboot while the server is down: the same valid SVID within 1 s of the agent being up, rotation resumes when the server returns', async (t) => {
  const tpm = await rebootableTpm(t, 'offline')
  // 60 s SVIDs renewed while 40 s are left: an outage shorter than 40 s costs workloads nothing.
  const serverToml = 'default_x509_svid_ttl = "60s"\nagent_ttl = "1h"'
  const agentToml = 'availability_target = "40s"'
  const setup = await servingTpmAgent(tpm.dir, tpm.sim, t, { serverToml, agentToml, spiffeId: APP })
  const { args, agent, socket: sock, first: before } = setup
  let server = setup.server
  assert.equal(before.spiffeId, APP)

  // The outage, then a power cut: server gone, agent killed -9, the TPM restarted.
  await kill9(server)
  await kill9(agent)
  await tpm.reboot()

  const spawned = Date.now()
  const again = await startCli(args, t)
  const up = Date.now()
  const served = await fetchServed(sock)
  const firstServed = Date.now()
  console.log(
    `offline restart: spawn→ready ${up - spawned} ms, ready→served ${firstServed - up} ms, spawn→served ${firstServed - spawned} ms`,
  )
  assert.equal(served.leaf, before.leaf, 'not the same SVID as before the reboot')
  assert.ok(firstServed - up <= 1000, `served ${firstServed - up} ms after the agent was up`)
  assert.match(again.stderr(), /serving workload SVIDs from the sealed cache/)

  // The server returns on its old address: the agent renews on its own (the SVID is due at
  // 60 s - 40 s), with no restart.
  server = await startTpmServer(tpm.dir, tpm.sim.ekCaBundle, t, serverToml, server.port)
  const rotated = await until('a rotated SVID', 60_000, async () => {
    const s = await fetchServed(sock)
    return s.leaf !== before.leaf ? s : undefined
  })
  assert.equal(rotated.spiffeId, APP)
  assert.ok(rotated.notAfter > before.notAfter)
  await until('the agent to say the server answers', 10_000, async () =>
    /the server answers again/.test(again.stderr()) ? true : undefined,
  )
  again.child.kill('SIGTERM')
  assert.equal(await again.exited, 0)
})

test('an outage longer than the agent SVID, with a reboot in it: no workload gap, the agent re-attests by itself when the server is back', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-offline-'))
  await using sim = await startSwtpm()
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  // The agent SVID lives 20 s; workload SVIDs 90 s, renewed while 40 s are left.
  const serverToml = 'default_x509_svid_ttl = "90s"\nagent_ttl = "20s"'
  const agentToml = 'availability_target = "40s"'
  const setup = await servingTpmAgent(dir, sim, t, { serverToml, agentToml, spiffeId: APP })
  const { args, socket: sock, first: before } = setup
  let { server, agent } = setup

  await kill9(server)
  const outage = Date.now()
  const gaps: string[] = []
  const probe = async () => {
    try {
      await fetchServed(sock, 2000)
    } catch (err) {
      gaps.push(`${Math.round((Date.now() - outage) / 1000)} s: ${(err as Error).message}`)
    }
  }
  // Past the agent SVID's whole life (20 s), then a reboot of the agent while still offline.
  while (Date.now() - outage < 24_000) {
    await probe()
    await sleep(1000)
  }
  await kill9(agent)
  agent = await startCli(args, t)
  const afterReboot = await fetchServed(sock)
  assert.equal(afterReboot.leaf, before.leaf)
  assert.match(agent.stderr(), /restored agent identity.*"expired":true/)
  for (let i = 0; i < 3; i++) {
    await probe()
    await sleep(1000)
  }

  server = await startTpmServer(dir, sim.ekCaBundle, t, serverToml, server.port)
  await until('the agent to re-attest', 30_000, async () =>
    /expired while the server was unreachable; attesting again/.test(agent.stderr()) &&
    /node attested/.test(agent.stderr())
      ? true
      : undefined,
  )
  // Rotation resumes with the new agent identity (the workload SVID is due 50 s after issue).
  const rotated = await until('a rotated SVID', 60_000, async () => {
    await probe()
    const s = await fetchServed(sock)
    return s.leaf !== before.leaf ? s : undefined
  })
  assert.equal(rotated.spiffeId, APP)
  assert.deepEqual(gaps, [], 'a workload found no valid SVID during the outage')
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
})
