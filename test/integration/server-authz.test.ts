import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { type AgentAuth, GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { startTestServer, type TestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

type After = { after: (fn: () => void) => void }

/** Attests a fresh agent with a join token; its client is closed when the test ends. */
async function attest(t: After, address: string, token: string) {
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address, trustDomain: td, bundle: 'insecure' })
  t.after(() => client.close())
  const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
  const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
  return { client, r, auth, keys }
}

async function entry(s: TestServer, body: Record<string, unknown>): Promise<string> {
  return String((await s.admin('POST', '/v1/entries', body)).id)
}

const workload = (spiffeId: string, parentId: string, uid: number) => ({
  spiffe_id: spiffeId,
  parent_id: parentId,
  selectors: [{ type: 'unix', value: `uid:${uid}` }],
})

const refused = (status: number, reason: string) => (e: unknown) =>
  e instanceof NodeCallError && e.status === status && e.reason === reason

/** An agent, a node alias it matches (fleet/a), one it does not (fleet/b), and their children. */
async function aliasFixture(t: After, s: TestServer) {
  const agent = await attest(t, s.address, await s.token())
  const me = agent.auth.spiffeId
  const aliasA = await entry(s, {
    node: true,
    spiffe_id: 'spiffe://example.org/fleet/a',
    selectors: [{ type: 'spiffe_id', value: me }],
  })
  const childA = await entry(
    s,
    workload('spiffe://example.org/fleet/a/web', 'spiffe://example.org/fleet/a', 1),
  )
  const grandchildA = await entry(
    s,
    workload('spiffe://example.org/fleet/a/web/sidecar', 'spiffe://example.org/fleet/a/web', 2),
  )
  // Every selector of an alias must be the agent's: this one has the agent's ID and one more.
  const aliasB = await entry(s, {
    node: true,
    spiffe_id: 'spiffe://example.org/fleet/b',
    selectors: [
      { type: 'spiffe_id', value: me },
      { type: 'tpm', value: 'manufacturer:IBM' },
    ],
  })
  const childB = await entry(
    s,
    workload('spiffe://example.org/fleet/b/web', 'spiffe://example.org/fleet/b', 3),
  )
  return { agent, aliasA, childA, grandchildA, aliasB, childB }
}

test('a node alias authorizes its descendants to agents with all its selectors', async (t) => {
  await using s = await startTestServer()
  const f = await aliasFixture(t, s)
  const { client, auth, keys } = f.agent
  const sync = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.equal(sync.full, true)
  const ids = sync.entries.map((e) => e.id)
  // As SPIRE's authorized-entries crawl: the alias's descendants; the alias entry itself is the
  // agent's extra name, not an entry it issues SVIDs for.
  assert.deepEqual([...ids].sort(), [f.childA, f.grandchildA].sort())
  for (const other of [f.aliasA, f.aliasB, f.childB]) assert.ok(!ids.includes(other), other)

  const csr = await createCsr(await keys.generateKey('w', 'ec-p256'))
  const batch = await client.call(
    'BatchNewX509SVID',
    {
      params: [
        { entryId: f.childA, csr },
        { entryId: f.childB, csr },
        { entryId: f.grandchildA, csr },
        { entryId: f.aliasA, csr },
      ],
    },
    auth,
  )
  assert.deepEqual(
    batch.results.map((r) => r.status),
    [0, 5, 0, 5],
  )
  assert.equal(batch.results[0]!.svid!.spiffeId, 'spiffe://example.org/fleet/a/web')
  assert.equal(batch.results[2]!.svid!.spiffeId, 'spiffe://example.org/fleet/a/web/sidecar')
  await assert.rejects(
    client.call('NewJWTSVID', { entryId: f.childB, audience: ['db'] }, auth),
    (e: unknown) => e instanceof NodeCallError && e.status === 5,
  )

  // Another agent matches neither alias.
  const stranger = await attest(t, s.address, await s.token())
  const none = await stranger.client.call('SyncEntries', { sinceRevision: 0 }, stranger.auth)
  assert.deepEqual(none.entries, [])
})

test('an expired join token is refused', async (t) => {
  await using s = await startTestServer()
  const { token } = await s.admin('POST', '/v1/tokens', { ttl: 1 })
  await sleep(2100)
  await assert.rejects(attest(t, s.address, String(token)), refused(7, 'attestation_failed'))
  assert.deepEqual((await s.admin('GET', '/v1/agents')).agents, [])
})

test('an evicted agent is refused until it attests again with a new token', async (t) => {
  await using s = await startTestServer()
  const first = await attest(t, s.address, await s.token())
  await first.client.call('SyncEntries', { sinceRevision: 0 }, first.auth)
  await s.admin('POST', `/v1/agents/${encodeURIComponent(first.auth.spiffeId)}/evict`)
  await assert.rejects(
    first.client.call('SyncEntries', { sinceRevision: 0 }, first.auth),
    refused(7, 'not_attested'),
  )
  const csr = await createCsr(await first.keys.generateKey('next', 'ec-p256'))
  await assert.rejects(
    first.client.call('RenewAgent', { csr }, first.auth),
    refused(7, 'not_attested'),
  )
  const again = await attest(t, s.address, await s.token())
  const sync = await again.client.call('SyncEntries', { sinceRevision: 0 }, again.auth)
  assert.equal(sync.full, true)
  const agents = (await s.admin('GET', '/v1/agents')).agents as { spiffeId: string }[]
  assert.deepEqual(
    agents.map((a) => a.spiffeId),
    [again.auth.spiffeId],
  )
})

/** What an agent that applied `entries` tells the server it holds. */
const knownOf = (entries: readonly { id: string; revisionNumber: number }[]) =>
  entries.map((e) => ({ id: e.id, revisionNumber: e.revisionNumber }))

test('an incremental SyncEntries reports a deleted authorized entry in deletedIds', async (t) => {
  await using s = await startTestServer()
  const { client, auth } = await attest(t, s.address, await s.token())
  const gone = await entry(s, workload('spiffe://example.org/gone', auth.spiffeId, 1))
  const kept = await entry(s, workload('spiffe://example.org/kept', auth.spiffeId, 2))
  const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.deepEqual(full.entries.map((e) => e.id).sort(), [gone, kept].sort())
  await s.admin('DELETE', `/v1/entries/${gone}`)
  const inc = await client.call(
    'SyncEntries',
    { sinceRevision: full.revision, known: knownOf(full.entries) },
    auth,
  )
  assert.equal(inc.full, false)
  assert.ok(inc.revision > full.revision)
  assert.ok(inc.deletedIds.includes(gone), `deletedIds: ${inc.deletedIds.join(',')}`)
  assert.ok(!inc.deletedIds.includes(kept))
  assert.deepEqual(inc.entries, [])
  // From the new revision on, nothing more to report.
  const held = full.entries.filter((e) => e.id !== gone)
  const after = await client.call(
    'SyncEntries',
    { sinceRevision: inc.revision, known: knownOf(held) },
    auth,
  )
  assert.deepEqual([after.full, after.entries, after.deletedIds], [false, [], []])
})

test('an incremental SyncEntries revokes the descendants of a deleted node alias', async (t) => {
  await using s = await startTestServer()
  const f = await aliasFixture(t, s)
  const { client, auth } = f.agent
  const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.deepEqual(full.entries.map((e) => e.id).sort(), [f.childA, f.grandchildA].sort())
  await s.admin('DELETE', `/v1/entries/${f.aliasA}`)
  // The server no longer issues for them ...
  const csr = await createCsr(await f.agent.keys.generateKey('w', 'ec-p256'))
  const batch = await client.call(
    'BatchNewX509SVID',
    { params: [{ entryId: f.childA, csr }] },
    auth,
  )
  assert.equal(batch.results[0]!.status, 5)
  // ... so the agent, which synced them, must be told to drop them.
  const inc = await client.call(
    'SyncEntries',
    { sinceRevision: full.revision, known: knownOf(full.entries) },
    auth,
  )
  const dropped = inc.full
    ? [f.childA, f.grandchildA].filter((id) => !inc.entries.some((e) => e.id === id))
    : inc.deletedIds.filter((id) => id === f.childA || id === f.grandchildA)
  assert.deepEqual(dropped.sort(), [f.childA, f.grandchildA].sort())
})

test('an incremental SyncEntries delivers old descendants of a new node alias', async (t) => {
  await using s = await startTestServer()
  const { client, auth } = await attest(t, s.address, await s.token())
  const child = await entry(
    s,
    workload('spiffe://example.org/fleet/c/web', 'spiffe://example.org/fleet/c', 1),
  )
  const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.deepEqual(full.entries, [])
  await entry(s, {
    node: true,
    spiffe_id: 'spiffe://example.org/fleet/c',
    selectors: [{ type: 'spiffe_id', value: auth.spiffeId }],
  })
  const inc = await client.call(
    'SyncEntries',
    { sinceRevision: full.revision, known: knownOf(full.entries) },
    auth,
  )
  assert.ok(
    inc.entries.some((e) => e.id === child),
    `entries: ${inc.entries.map((e) => e.id).join(',')}; full: ${inc.full}`,
  )
  assert.ok(!inc.deletedIds.includes(child))
})

test('a CSR with a corrupt signature fails alone; results keep request order', async (t) => {
  await using s = await startTestServer()
  const { client, auth, keys } = await attest(t, s.address, await s.token())
  const ids = [
    await entry(s, workload('spiffe://example.org/one', auth.spiffeId, 1)),
    await entry(s, workload('spiffe://example.org/two', auth.spiffeId, 2)),
    await entry(s, workload('spiffe://example.org/three', auth.spiffeId, 3)),
  ]
  const good = await createCsr(await keys.generateKey('w', 'ec-p256'))
  const bad = new Uint8Array(good)
  // The last DER byte is the end of the ECDSA signature's s: the CSR still parses, but the
  // signature no longer verifies (no proof of possession).
  const last = bad.length - 1
  bad[last] = bad[last]! ^ 0x01
  const batch = await client.call(
    'BatchNewX509SVID',
    {
      params: [
        { entryId: ids[2]!, csr: good },
        { entryId: ids[0]!, csr: bad },
        { entryId: ids[1]!, csr: good },
      ],
    },
    auth,
  )
  assert.deepEqual(
    batch.results.map((r) => r.status),
    [0, 3, 0],
  )
  assert.deepEqual(
    batch.results.map((r) => r.svid?.spiffeId ?? null),
    ['spiffe://example.org/three', null, 'spiffe://example.org/two'],
  )
  // The bad CSR did not poison the agent: the same entry works with a good one.
  const retry = await client.call(
    'BatchNewX509SVID',
    { params: [{ entryId: ids[0]!, csr: good }] },
    auth,
  )
  assert.equal(retry.results[0]!.status, 0)
})
