import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import type { X509Update } from '../../src/agent/workload-api/types.js'
import { startTestAgent } from '../helpers/agent.js'
import { bareEntry } from '../helpers/datastore-fixtures.js'
import { startTestServer } from '../helpers/server.js'

const uid1000 = [{ type: 'unix', value: 'uid:1000' }]

test('an entry the server cannot issue neither stalls FetchX509SVID nor fails the JWTs of the others', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await using a = await startTestAgent(s.address, dir, token, { syncIntervalMs: 60_000 })
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/web',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  // Written straight to the datastore (the admin API may refuse it): an ID no SVID can carry.
  await s.server.datastore.createEntry(
    bareEntry(
      'spiffe://other.org/bad',
      'spiffe://example.org/gw',
      [{ type: 'unix', value: 'uid:1000' }],
      {
        x509SvidTtl: 3600,
        jwtSvidTtl: 300,
      },
    ),
  )
  // Both entries reach the agent; the good one gets its SVID, the bad one is refused.
  await a.manager.syncNow()
  const t0 = performance.now()
  let stop: (() => void) | undefined
  const first = await new Promise<X509Update>((resolve) => {
    stop = a.manager.subscribeX509(uid1000, resolve) // may call back at once
  })
  stop?.()
  const ms = performance.now() - t0
  assert.deepEqual(
    first.svids.map((x) => x.spiffeId),
    ['spiffe://example.org/web'],
  )
  assert.ok(ms < 2000, `the first X509 update took ${ms} ms (waited for the refused entry)`)
  // JWTs: an entry the agent still holds but the server no longer authorizes (deleted since the
  // last sync) is refused by the server; the workload's other identities are still served.
  const gone = await s.server.datastore.createEntry(
    bareEntry(
      'spiffe://example.org/gone',
      'spiffe://example.org/gw',
      [{ type: 'unix', value: 'uid:1000' }],
      {
        x509SvidTtl: 3600,
        jwtSvidTtl: 300,
      },
    ),
  )
  await a.manager.syncNow()
  await s.server.datastore.deleteEntry(gone.id)
  const jwts = await a.manager.fetchJwtSvids(uid1000, ['aud'])
  const ids = jwts.map((j) => j.spiffeId)
  assert.ok(ids.includes('spiffe://example.org/web'), ids.join())
  assert.ok(!ids.includes('spiffe://example.org/gone'), ids.join())
  // Asking for the refused one alone still fails.
  await assert.rejects(a.manager.fetchJwtSvids(uid1000, ['aud'], 'spiffe://example.org/gone'))
})

test('the JWT-SVID cache stays under its byte cap; audience limits are InvalidArgument', async (t) => {
  await using s = await startTestServer()
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await s.token('spiffe://example.org/gw')
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/web',
    parent_id: 'spiffe://example.org/gw',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  const cap = 96 * 1024
  await using a = await startTestAgent(s.address, dir, token, {
    syncIntervalMs: 60_000,
    jwtCacheMaxBytes: cap,
  })
  let peak = 0
  for (let i = 0; i < 60; i++) {
    // 7 audiences of 1000 bytes: near the per-request total, a ~20 KB cache slot each.
    const aud = Array.from({ length: 7 }, (_, j) => `${i}-${j}-`.padEnd(1000, 'x'))
    const r = await a.manager.fetchJwtSvids(uid1000, aud)
    assert.equal(r.length, 1)
    const st = a.manager.jwtCacheStats()
    peak = Math.max(peak, st.bytes)
    assert.ok(st.bytes <= cap, `cache at ${st.bytes} bytes > ${cap}`)
  }
  const st = a.manager.jwtCacheStats()
  assert.ok(st.entries >= 2 && st.entries < 10, `${st.entries} cached`)
  assert.ok(peak > cap / 2, `peak ${peak}: the test should fill the cache`)
  // A cached token is still served from the cache (same audiences, same token).
  const aud = Array.from({ length: 7 }, (_, j) => `59-${j}-`.padEnd(1000, 'x'))
  const again = await a.manager.fetchJwtSvids(uid1000, aud)
  const again2 = await a.manager.fetchJwtSvids(uid1000, aud)
  assert.equal(again[0]!.token, again2[0]!.token)
  // The limits hold at the manager too, not only at the socket.
  for (const bad of [
    Array.from({ length: 33 }, (_, i) => `a${i}`),
    ['x'.repeat(900 * 1024)],
    Array(9).fill('y'.repeat(1000)),
    [],
  ]) {
    await assert.rejects(
      a.manager.fetchJwtSvids(uid1000, bad),
      (err: Error & { status?: number }) => {
        assert.equal(err.status, 3, err.message)
        return true
      },
    )
  }
})
