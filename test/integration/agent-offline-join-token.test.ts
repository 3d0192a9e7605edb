/**
 * A join-token agent whose SVID ran out during an outage cannot attest again by itself (its token
 * is spent): when the server returns it says so with a stable code and the remedy, keeps serving
 * the cached workload SVIDs, and does not exit as if it had been evicted.
 */
import assert from 'node:assert/strict'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { CACHE_FILE } from '../../src/agent/cache/sealed-svids.js'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { createEntry, fetchServed, kill9, until } from '../helpers/offline.js'

test('join-token agent expired while offline: ERR_AGENT_SVID_EXPIRED with the remedy, cached SVIDs still served', async (t) => {
  const dir = processDir('spiffe-edge-offline-jt-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const serverToml = 'agent_ttl = "8s"\ndefault_x509_svid_ttl = "1h"'
  let server = await startServerProcess(dir, t, serverToml)
  const token = JSON.parse(await server.admin('token', 'generate', '--json')).value as string
  const config = writeAgentConfig(
    dir,
    server.address,
    `insecure_bootstrap = true\nsync_interval = "1s"\njoin_token = "${token}"`,
  )
  const agent = await startCli(agentArgs(config), t)
  const sock = join(dir, 'agent', 'public', 'api.sock')
  await createEntry(server.adminSocket, String(agent.first.agent_id), 'spiffe://example.org/jt/app')
  const before = await until('a first SVID', 30_000, () => fetchServed(sock))

  await kill9(server)
  await sleep(10_000) // past the agent SVID's 8 s
  const port = Number(server.address.split(':').pop())
  server = await startServerProcess(dir, t, serverToml, port)
  await until('the agent to say it needs a new token', 30_000, async () =>
    /ERR_AGENT_SVID_EXPIRED/.test(agent.stderr()) ? true : undefined,
  )
  const line = agent
    .stderr()
    .split('\n')
    .find((l) => l.includes('"code":"ERR_AGENT_SVID_EXPIRED"') && l.includes('"level":"error"'))
  assert.ok(line, agent.stderr())
  const j = JSON.parse(line) as { remedy: string; msg: string }
  assert.match(j.msg, /join-token agent cannot attest again by itself/)
  assert.match(j.remedy, /new join token.*--join-token/)
  // Still running and serving what it has.
  assert.equal(agent.child.exitCode, null)
  assert.equal((await fetchServed(sock)).leaf, before.leaf)
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)

  // Restarted with no token and nothing cached to serve: it exits saying what it needs.
  rmSync(join(dir, 'agent', CACHE_FILE))
  writeAgentConfig(dir, server.address, 'insecure_bootstrap = true\nsync_interval = "1s"')
  const r = await cli(agentArgs(config))
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, /error\[ERR_AGENT_SVID_EXPIRED\]/)
  assert.match(r.stderr, /new join token/)
})

test('a corrupted sealed cache is refused with a log line and replaced by what the server issues; the replacement opens offline', async (t) => {
  const dir = processDir('spiffe-edge-offline-corrupt-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const server = await startServerProcess(dir, t)
  const token = JSON.parse(await server.admin('token', 'generate', '--json')).value as string
  const config = writeAgentConfig(
    dir,
    server.address,
    `insecure_bootstrap = true\nsync_interval = "1s"\njoin_token = "${token}"`,
  )
  let agent = await startCli(agentArgs(config), t)
  assert.match(agent.stderr(), /protected only by the key file/)
  const sock = join(dir, 'agent', 'public', 'api.sock')
  await createEntry(server.adminSocket, String(agent.first.agent_id), 'spiffe://example.org/jt/app')
  const first = await until('a first SVID', 30_000, () => fetchServed(sock))
  const cacheFile = join(dir, 'agent', CACHE_FILE)
  await until('the sealed cache', 10_000, async () => (existsSync(cacheFile) ? true : undefined))
  await kill9(agent)

  const f = JSON.parse(readFileSync(cacheFile, 'utf8')) as { records: { c: string }[] }
  const c = Buffer.from(f.records[0]!.c, 'base64')
  c[0] = c[0]! ^ 0x80
  f.records[0]!.c = c.toString('base64')
  writeFileSync(cacheFile, JSON.stringify(f))

  agent = await startCli(agentArgs(config), t)
  assert.match(agent.stderr(), /sealed SVID cache could not be opened or verified; discarded/)
  const fresh = await until('a new SVID', 30_000, () => fetchServed(sock))
  assert.notEqual(fresh.leaf, first.leaf, 'the corrupted cache was served')
  await until('the replaced cache', 10_000, async () => {
    const j = JSON.parse(readFileSync(cacheFile, 'utf8')) as { records: { c: string }[] }
    return j.records.length === 1 && j.records[0]!.c !== f.records[0]!.c ? true : undefined
  })
  await kill9(agent)
  await kill9(server)
  const offline = await startCli(agentArgs(config), t)
  assert.equal((await fetchServed(sock)).leaf, fresh.leaf)
  assert.doesNotMatch(offline.stderr(), /discarded/)
  offline.child.kill('SIGTERM')
  assert.equal(await offline.exited, 0)
})
