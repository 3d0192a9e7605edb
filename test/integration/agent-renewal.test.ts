import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { AgentManager } from '../../src/agent/manager.js'
import { AgentStorage } from '../../src/agent/storage.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'
import { testTrustDomain } from '../helpers/agent.js'
import { startTestServer } from '../helpers/server.js'

/**
 * Issue 9: renewal must not be left to the sync backoff. A 16 s agent SVID, the server gone from
 * just after one renewal until 11 s later: with plain exponential backoff (tries at 1.5 s, 4.5 s,
 * 10.5 s, 22.5 s at this jitter) the next try after the outage came at 22.5 s, after the SVID had
 * expired, and a join-token agent is then locked out for good. Once renewal is due (8 s) the agent
 * retries often enough to renew in time. (16 s, not 8 s: a server restart on a loaded 2-core
 * machine takes seconds, and the margin must not depend on it.)
 */
test('an agent renews its SVID before it expires across a server outage', {
  timeout: 90_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-renewal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const toml = 'attest_rate_per_second = 1000\ndefault_x509_svid_ttl = "16s"'
  let server = await startTestServer({ dir: join(dir, 'server'), extraToml: toml })
  t.after(() => server[Symbol.asyncDispose]())
  const port = server.server.port
  const lines: string[] = []
  const client = new GrpcNodeClient({
    address: server.address,
    trustDomain: testTrustDomain,
    bundle: 'insecure',
  })
  const { storage } = AgentStorage.open(join(dir, 'agent.sqlite3'))
  const manager = new AgentManager({
    trustDomain: testTrustDomain,
    client,
    storage,
    keyManager: new DiskKeyManager(join(dir, 'keys')),
    attestor: joinTokenAgentAttestor(await server.token()),
    workloadKeyType: 'ec-p256',
    syncIntervalMs: 1000,
    cacheMaxSize: 100,
    log: (level, msg, fields) => {
      lines.push(`${new Date().toISOString()} ${level} ${msg} ${JSON.stringify(fields ?? {})}`)
    },
    // No jitter: backoff and half-life are exact, so the schedule above is the one that runs.
    random: () => 0.5,
  })
  await manager.start()
  t.after(async () => {
    await manager.stop()
    client.close()
    storage.close()
  })
  const expiry = () => Date.parse(manager.health().agentExpiresAt!)

  // Wait for a renewal, then take the server away at once.
  const first = expiry()
  while (expiry() === first) await sleep(20)
  const renewedExpiry = expiry()
  await server.server.close()
  const downAt = Date.now()
  let sawExpired = false
  while (Date.now() < downAt + 11_000) {
    if (!manager.health().ready) sawExpired = true
    await sleep(100)
  }
  server = await startTestServer({ dir: join(dir, 'server'), extraToml: toml, port })
  // Until well past the old SVID's end, the agent must hold a valid SVID at every moment.
  while (Date.now() < renewedExpiry + 2000) {
    if (!manager.health().ready) sawExpired = true
    await sleep(100)
  }
  assert.equal(
    sawExpired,
    false,
    `agent SVID expired (down at ${new Date(downAt).toISOString()}): ${JSON.stringify(manager.health())}\n${lines.join('\n')}`,
  )
  assert.ok(expiry() > renewedExpiry, 'renewed after the server came back')
})
