import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { AgentStorage } from '../../src/agent/storage.js'
import type { X509Update } from '../../src/agent/workload-api/types.js'
import { x509 } from '../../src/common/x509.js'
import { startTestAgent } from '../helpers/agent.js'
import { startTestServer, type TestServer } from '../helpers/server.js'

const agentFor = (
  s: TestServer,
  dir: string,
  token: string,
  syncIntervalMs = 200,
  cacheMaxSize = 1000,
) => startTestAgent(s.address, dir, token, { syncIntervalMs, cacheMaxSize })

function nextUpdate(updates: X509Update[], count: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (updates.length >= count) return resolve()
      if (Date.now() > deadline)
        return reject(new Error(`only ${updates.length} of ${count} updates arrived`))
      setTimeout(tick, 20)
    }
    tick()
  })
}

test('the agent attests, syncs entries and serves matching SVIDs whose keys match their certificates', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/web',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
    hint: 'web',
  })
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/db',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:1001' }],
  })
  await using a = await agentFor(s, dir, token)
  const updates: X509Update[] = []
  const stop = a.manager.subscribeX509(
    [
      { type: 'unix', value: 'uid:1000' },
      { type: 'unix', value: 'gid:0' },
    ],
    (u) => updates.push(u),
  )
  await nextUpdate(updates, 1)
  stop()
  const u = updates[0]!
  assert.deepEqual(
    u.svids.map((x) => x.spiffeId),
    ['spiffe://example.org/web'],
  )
  const svid = u.svids[0]!
  assert.equal(svid.hint, 'web')
  const leaf = new x509.X509Certificate(svid.chain[0]!)
  const fromKey = createPublicKey(
    createPrivateKey({ key: Buffer.from(svid.privateKey), format: 'der', type: 'pkcs8' }),
  ).export({ type: 'spki', format: 'der' })
  assert.deepEqual(Buffer.from(leaf.publicKey.rawData), fromKey)
  assert.ok(u.bundles.get('example.org')?.length)
  // A caller matching nothing gets an update with no SVIDs.
  const none: X509Update[] = []
  a.manager.subscribeX509([{ type: 'unix', value: 'uid:5' }], (x) => none.push(x))()
  assert.equal(none[0]?.svids.length, 0)
})

test('a short TTL rotates SVIDs: a watcher sees at least three successive certificates', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/short',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:7' }],
    x509_svid_ttl: 3,
  })
  await using a = await agentFor(s, dir, token, 150)
  const updates: X509Update[] = []
  const stop = a.manager.subscribeX509([{ type: 'unix', value: 'uid:7' }], (u) => updates.push(u))
  t.after(stop)
  await nextUpdate(updates, 3, 20_000)
  const serials = new Set(
    updates.map((u) => new x509.X509Certificate(u.svids[0]!.chain[0]!).serialNumber),
  )
  assert.ok(serials.size >= 3, `distinct certificates: ${serials.size}`)
})

test('a restarted agent keeps its identity (no re-attestation) and serves while the server is down', async (t) => {
  const s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/web',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  let agentId: string | undefined
  {
    await using a = await agentFor(s, dir, token)
    agentId = a.manager.agentId
  }
  // The token is spent: only restored state lets this start succeed.
  await using b = await agentFor(s, dir, token)
  assert.equal(b.manager.agentId, agentId)
  await s[Symbol.asyncDispose]()
  await assert.rejects(b.manager.syncNow())
  const updates: X509Update[] = []
  b.manager.subscribeX509([{ type: 'unix', value: 'uid:1000' }], (u) => updates.push(u))
  await nextUpdate(updates, 1)
  assert.equal(updates[0]!.svids.length, 1, 'cached SVIDs are still served')
  const h = b.manager.health()
  assert.ok(h.failures >= 1 && h.lastError)
  assert.equal(h.ready, true)
})

test('a corrupt state database is moved aside and the agent starts over', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'agent.sqlite3'), 'this is not a database, it is garbage '.repeat(200))
  const { storage, recovered } = AgentStorage.open(join(dir, 'agent.sqlite3'))
  assert.equal(recovered, true)
  assert.deepEqual(storage.load(), {})
  storage.close()
})

test('the SVID cache is a soft limit: past it, SVIDs are issued only for subscribers, and never evicted from them', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  for (const n of [1, 2, 3]) {
    await s.admin('POST', '/v1/entries', {
      spiffe_id: `spiffe://example.org/w${n}`,
      parent_id: 'spiffe://example.org/gw',
      selectors: [{ type: 'unix', value: `uid:${n}` }],
    })
  }
  await using a = await agentFor(s, dir, token, 200, 1)
  assert.equal(a.manager.cachedSvidCount(), 1, 'one SVID prefetched within the limit')
  const got: X509Update[] = []
  const stop2 = a.manager.subscribeX509([{ type: 'unix', value: 'uid:2' }], (u) => got.push(u))
  const stop3 = a.manager.subscribeX509([{ type: 'unix', value: 'uid:3' }], (u) => got.push(u))
  await nextUpdate(got, 2)
  const ids = got.map((u) => u.svids[0]?.spiffeId).sort()
  assert.deepEqual(ids, ['spiffe://example.org/w2', 'spiffe://example.org/w3'])
  // Subscribed SVIDs stay even though the cache is over its limit.
  await a.manager.syncNow()
  assert.ok(a.manager.cachedSvidCount() >= 2)
  stop2()
  stop3()
})
