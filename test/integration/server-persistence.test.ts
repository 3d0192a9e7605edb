/**
 * What the server keeps across a restart and what it keeps at rest: RenewAgent's replaced serial,
 * join tokens (never usable from a copy of the database), and the entries it refuses to store.
 */

import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { loadBetterSqlite3 } from '../../src/server/datastore/sqlite.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { type AgentAuth, GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { bareEntry } from '../helpers/datastore-fixtures.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-persist-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

async function attest(address: string, token: string) {
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address, trustDomain: td, bundle: 'insecure' })
  const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
  const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
  return { client, r, auth, keys }
}

test('RenewAgent: the old SVID still works after a server restart, until the new one is used', async (t) => {
  const dir = tempDir(t)
  let s = await startTestServer({ dir })
  const { client, auth, keys, r } = await attest(s.address, await s.token())
  t.after(() => client.close())
  const next = await keys.generateKey('next', 'ec-p256')
  const renewed = await client.call('RenewAgent', { csr: await createCsr(next) }, auth)
  const port = s.server.port
  await s[Symbol.asyncDispose]()
  // The agent crashed before storing the new SVID, and the server restarted meanwhile.
  s = await startTestServer({ dir, port })
  t.after(() => s[Symbol.asyncDispose]())
  // A new channel, as the restarted agent would have.
  let c2 = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: r.bundle })
  t.after(() => c2.close())
  await c2.call('SyncEntries', { sinceRevision: 0 }, auth) // the replaced SVID: accepted
  const auth2: AgentAuth = { ...auth, chain: renewed.svid!.certChain, signer: next }
  await c2.call('SyncEntries', { sinceRevision: 0 }, auth2)
  await assert.rejects(
    c2.call('SyncEntries', { sinceRevision: 0 }, auth),
    (e: unknown) => e instanceof NodeCallError && e.reason === 'stale_svid',
  )
  // Clearing it is persisted too: a restart does not revive the replaced SVID.
  const port2 = s.server.port
  await s[Symbol.asyncDispose]()
  s = await startTestServer({ dir, port: port2 })
  c2.close()
  c2 = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: r.bundle })
  await c2.call('SyncEntries', { sinceRevision: 0 }, auth2)
  await assert.rejects(
    c2.call('SyncEntries', { sinceRevision: 0 }, auth),
    (e: unknown) => e instanceof NodeCallError && e.reason === 'stale_svid',
  )
})

/** Every text and blob value of every table, as one string. */
function everyValue(path: string): string {
  const db = new (loadBetterSqlite3())(path, { readonly: true, fileMustExist: true })
  try {
    const tables = db
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'")
      .all()
    const out: string[] = []
    for (const { name } of tables) {
      for (const row of db.prepare(`SELECT * FROM "${name}"`).all() as Record<string, unknown>[])
        out.push(
          ...Object.values(row).map((v) => (Buffer.isBuffer(v) ? v.toString('hex') : String(v))),
        )
    }
    return out.join('\n')
  } finally {
    db.close()
  }
}

test('token generate --spiffeID stores no usable token; using the token still yields the alias entry', async (t) => {
  const dir = tempDir(t)
  await using s = await startTestServer({ dir })
  const token = await s.token('spiffe://example.org/node/edge-1')
  const dbPath = join(dir, 'data', 'datastore.sqlite3')
  assert.ok(!everyValue(dbPath).includes(token), 'no table holds the live token')
  for (const f of [dbPath, `${dbPath}-wal`]) {
    if (existsSync(f)) assert.ok(!readFileSync(f).includes(token), `${f} bytes hold no token`)
  }
  assert.deepEqual((await s.admin('GET', '/v1/entries')).entries, [])

  const { client, auth } = await attest(s.address, token)
  t.after(() => client.close())
  const entries = (await s.admin('GET', '/v1/entries')).entries as {
    spiffeId: string
    parentId: string
    selectors: { type: string; value: string }[]
  }[]
  assert.equal(entries.length, 1)
  assert.equal(entries[0]!.spiffeId, 'spiffe://example.org/node/edge-1')
  assert.equal(entries[0]!.parentId, auth.spiffeId) // SPIRE's shape: the agent ID, spent token
  assert.deepEqual(entries[0]!.selectors, [{ type: 'spiffe_id', value: auth.spiffeId }])
  // The agent is authorized for the alias, so workloads parented to it reach the agent.
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/web',
    parent_id: 'spiffe://example.org/node/edge-1',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  const sync = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.deepEqual(sync.entries.map((e) => e.spiffeId).sort(), [
    'spiffe://example.org/node/edge-1',
    'spiffe://example.org/web',
  ])
})

test('alias entries an earlier version wrote with a live token are dropped at start, and come back on use', async (t) => {
  const dir = tempDir(t)
  let s = await startTestServer({ dir })
  const token = await s.token('spiffe://example.org/node/old')
  const agentId = `spiffe://example.org/spire/agent/join_token/${token}`
  // What `token generate --spiffeID` used to write.
  await s.server.datastore.createEntry(
    bareEntry('spiffe://example.org/node/old', agentId, [{ type: 'spiffe_id', value: agentId }]),
  )
  await s[Symbol.asyncDispose]()
  s = await startTestServer({ dir })
  t.after(() => s[Symbol.asyncDispose]())
  assert.deepEqual((await s.admin('GET', '/v1/entries')).entries, [])
  assert.ok(!everyValue(join(dir, 'data', 'datastore.sqlite3')).includes(token))
  const { client } = await attest(s.address, token)
  client.close()
  const entries = (await s.admin('GET', '/v1/entries')).entries as { parentId: string }[]
  assert.deepEqual(
    entries.map((e) => e.parentId),
    [agentId],
  )
})

test('entries for the trust domain itself, the agent namespace, or with control characters are refused', async () => {
  await using s = await startTestServer()
  const base = {
    parent_id: 'spiffe://example.org/spire/agent/join_token/x',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  }
  const refused = async (body: Record<string, unknown>, why: string) => {
    await assert.rejects(
      s.admin('POST', '/v1/entries', { ...base, ...body }),
      (e: { code?: string }) => e.code === 'ERR_DATASTORE_INVALID',
      why,
    )
  }
  await refused({ spiffe_id: 'spiffe://example.org' }, 'the trust domain')
  await refused({ spiffe_id: 'spiffe://example.org/spire/agent/join_token/abc' }, 'agent ns')
  await refused({ spiffe_id: 'spiffe://example.org/spire/agent' }, 'agent ns root')
  await refused({ spiffe_id: 'spiffe://example.org/spire/server' }, 'the server')
  for (const value of ['uid:1\n000', 'a\u0000b', 'x\u007f', 'tab\there', 'c1\u0085']) {
    await refused(
      { spiffe_id: 'spiffe://example.org/w', selectors: [{ type: 'unix', value }] },
      value,
    )
  }
  await assert.rejects(
    s.admin('POST', '/v1/tokens', { spiffe_id: 'spiffe://example.org' }),
    (e: { code?: string }) => e.code === 'ERR_DATASTORE_INVALID',
  )
  // Still fine: a node alias (parent /spire/server) and an ordinary workload.
  await s.admin('POST', '/v1/entries', { ...base, spiffe_id: 'spiffe://example.org/w' })
  await s.admin('POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/spire-agents/edge',
    node: true,
    selectors: [{ type: 'tpm', value: 'pub_hash:ab' }],
  })
  assert.equal(((await s.admin('GET', '/v1/entries')).entries as unknown[]).length, 2)
})
