/**
 * The agent's health while the server is away: offline since the last good sync (across a
 * restart), for how long, and when the first cached SVID expires.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { startAgent } from '../../src/agent/agent.js'
import { parseAgentConfig } from '../../src/agent/config.js'
import { silentLog } from '../../src/common/log.js'
import { fetchServed, until } from '../helpers/offline.js'
import { startTestServer } from '../helpers/server.js'

test('health: offline since the last good sync, for how long, first cached SVID expiry; kept across a restart', async (t) => {
  const s = await startTestServer({
    extraToml: 'attest_rate_per_second = 1000\ndefault_x509_svid_ttl = "1h"',
  })
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-offline-health-'))
  let serverUp = true
  const stopServer = async () => {
    if (serverUp) await s[Symbol.asyncDispose]()
    serverUp = false
  }
  t.after(async () => {
    await stopServer()
    rmSync(dir, { recursive: true, force: true })
  })
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/me',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }],
  })
  const config = parseAgentConfig(
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${s.address}"\ndata_dir = "${dir}"\n` +
      `socket_path = "${join(dir, 'api.sock')}"\ninsecure_bootstrap = true\nsync_interval = "1s"\njoin_token = "${token}"\n` +
      '[plugins.WorkloadAttestor.unix]\n',
    join(dir, 'agent.conf'),
  )
  let agent = await startAgent(config, { log: silentLog })
  t.after(() => agent.close())
  const served = await until('an SVID', 20_000, () => fetchServed(agent.socketPath))
  let h = agent.manager.health()
  assert.equal(h.offline, false)
  assert.equal(h.offlineSeconds, undefined)
  // The workload's SVID and the node alias's (spiffe://example.org/gw), both 1 h.
  assert.equal(h.cachedSvids, 2)
  const first = Date.parse(h.firstSvidExpiresAt!)
  assert.ok(first <= served.notAfter && served.notAfter - first < 10_000, h.firstSvidExpiresAt)
  const lastOk = Date.parse(h.lastSyncOk!)

  await stopServer()
  await until('the agent to notice', 20_000, async () =>
    agent.manager.health().offline ? true : undefined,
  )
  await sleep(2100)
  h = agent.manager.health()
  const since = h.offlineSince!
  assert.ok(Date.parse(since) >= lastOk, since)
  assert.ok(h.offlineSeconds! >= 2, `offline ${h.offlineSeconds} s`)
  assert.equal(Date.parse(h.firstSvidExpiresAt!), first)
  assert.ok(h.failures > 0)

  // A restart while still offline: health says offline at once, since the last good sync
  // before the restart (saved), and the cached SVID is served.
  await agent.close()
  agent = await startAgent(config, { log: silentLog })
  h = agent.manager.health()
  assert.equal(h.offline, true)
  assert.ok(
    Math.abs(Date.parse(h.offlineSince!) - lastOk) < 1000,
    `${h.offlineSince} vs ${new Date(lastOk).toISOString()}`,
  )
  assert.ok(h.offlineSeconds! >= 2)
  assert.equal(Date.parse(h.firstSvidExpiresAt!), first)
  assert.equal((await fetchServed(agent.socketPath)).leaf, served.leaf)
})
