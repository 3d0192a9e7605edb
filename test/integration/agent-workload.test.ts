import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { findFreePorts } from '../../hardware-sim/process.js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { type ClientX509Response, workloadClient } from '../../src/agent/workload-api/client.js'
import { startWorkloadApi } from '../../src/agent/workload-api/server.js'
import { silentLog } from '../../src/common/log.js'
import { x509 } from '../../src/common/x509.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { startTestAgent } from '../helpers/agent.js'
import { startTestServer, type TestServer } from '../helpers/server.js'
import { MemoryWorkloadSource } from '../helpers/workload-source.js'

const td = TrustDomain.parse('example.org')
const me = `uid:${process.getuid!()}`

/** A real agent (manager + Workload API on a Unix socket) against a real server. */
async function agent(s: TestServer, dir: string, token: string) {
  const a = await startTestAgent(s.address, dir, token, { syncIntervalMs: 150 })
  const socketPath = join(dir, 'api.sock')
  const api = await startWorkloadApi({
    socketPath,
    source: a.manager,
    attestors: [unixAttestor()],
    trustDomain: td,
    log: silentLog,
  })
  return {
    manager: a.manager,
    socketPath,
    async [Symbol.asyncDispose]() {
      await api.close()
      await a[Symbol.asyncDispose]()
    },
  }
}

async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

test('a watching client receives at least three successive X.509 updates as a short TTL rotates', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agentwl-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/short',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: me }],
    x509_svid_ttl: 3,
  })
  await using a = await agent(s, dir, token)
  const wl = workloadClient(`unix://${a.socketPath}`)
  t.after(() => wl.close())
  const updates: ClientX509Response[] = []
  const abort = new AbortController()
  const watching = wl.watchX509((u) => updates.push(u), abort.signal)
  await until(() => updates.length >= 3, 'three updates')
  abort.abort()
  await watching
  const serials = new Set(
    updates.map((u) => new x509.X509Certificate(u.svids[0]!.chain[0]!).serialNumber),
  )
  assert.ok(serials.size >= 3, `${serials.size} distinct certificates`)
  for (const u of updates) assert.equal(u.svids[0]!.spiffeId, 'spiffe://example.org/short')
})

test('a server restart mid-sync: the agent keeps serving, then resumes and picks up new entries', async (t) => {
  const serverDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-restart-'))
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agentwl-'))
  t.after(() => {
    rmSync(serverDir, { recursive: true, force: true })
    rmSync(dir, { recursive: true, force: true })
  })
  const port = await findFreePorts(1)
  const first = await startTestServer({ dir: serverDir, port })
  const token = await first.token('spiffe://example.org/gw')
  await first.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/a',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: me }],
  })
  await using a = await agent(first, dir, token)
  const wl = workloadClient(`unix://${a.socketPath}`)
  t.after(() => wl.close())
  assert.deepEqual(
    (await wl.fetchX509()).svids.map((x) => x.spiffeId),
    ['spiffe://example.org/a'],
  )

  await first[Symbol.asyncDispose]()
  await until(() => a.manager.health().failures > 0, 'a failed sync')
  // The Workload API does not depend on the server.
  assert.deepEqual(
    (await wl.fetchX509()).svids.map((x) => x.spiffeId),
    ['spiffe://example.org/a'],
  )
  assert.ok(a.manager.health().lastError)

  await using second = await startTestServer({ dir: serverDir, port })
  await second.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/b',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: me }],
  })
  // Backoff is capped at 48 x 150 ms: it comes back within seconds.
  await until(() => a.manager.health().failures === 0, 'a successful sync')
  let ids: string[] = []
  for (let i = 0; i < 100 && ids.length < 2; i++) {
    ids = (await wl.fetchX509()).svids.map((x) => x.spiffeId).sort()
    if (ids.length < 2) await new Promise((r) => setTimeout(r, 100))
  }
  assert.deepEqual(ids, ['spiffe://example.org/a', 'spiffe://example.org/b'])
})

test('health reports NOT_SERVING while the agent itself is not ready (no valid agent SVID)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-health-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const source = await MemoryWorkloadSource.create()
  let ready = false
  const socketPath = join(dir, 'api.sock')
  await using _api = await startWorkloadApi({
    socketPath,
    source,
    attestors: [unixAttestor()],
    trustDomain: td,
    log: silentLog,
    ready: () => ready,
  })
  const c = workloadClient(`unix://${socketPath}`)
  t.after(() => c.close())
  assert.equal(await c.health(), 'NOT_SERVING')
  ready = true
  assert.equal(await c.health(), 'SERVING')
})
