import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { AgentStorage } from '../../src/agent/storage.js'
import { loadBetterSqlite3 } from '../../src/server/datastore/sqlite.js'

/** Writes one raw state row, as a bad write or a hand edit would leave it. */
function putRaw(path: string, name: string, value: string): void {
  const Db = loadBetterSqlite3()
  const db = new Db(path)
  db.prepare(
    'INSERT INTO state (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value',
  ).run(name, Buffer.from(value))
  db.close()
}

const cases: [string, string, string][] = [
  ['agent_svid', 'not json{', 'truncated JSON'],
  ['agent_svid', '{"a":1}', 'JSON, not a list (was a TypeError)'],
  ['agent_svid', '[1,2]', 'a list of numbers'],
  ['agent_svid', '["AAAA"]', 'base64 that is not a certificate'],
  ['entries', '[null]', 'an entry that is null'],
  ['entries', '"x"', 'a string'],
  ['bundle', '[]', 'a bundle that is not an object'],
  ['revision', 'abc', 'a revision that is not a number'],
  ['reattestable', 'yes', 'neither true nor false'],
  ['federated_bundles', '[{"trustDomain":1}]', 'a federated bundle without its fields'],
]

test('federated bundles are saved and restored, and forgotten with the identity', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-state-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'agent.sqlite3')
  const fed = JSON.stringify([{ trustDomain: 'two.test', bundle: '{"keys":[]}' }])
  const a = AgentStorage.open(path)
  a.storage.save({ agentSpiffeId: 'spiffe://one.test/spire/agent/x', federatedBundles: fed })
  a.storage.close()
  const b = AgentStorage.open(path)
  assert.equal(b.storage.load().federatedBundles, fed)
  b.storage.clearIdentity()
  assert.equal(b.storage.load().federatedBundles, undefined)
  b.storage.close()
})

for (const [field, value, what] of cases) {
  test(`corrupt agent state (${field}: ${what}) is moved aside, not thrown`, (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-state-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    const path = join(dir, 'agent.sqlite3')
    const first = AgentStorage.open(path)
    assert.equal(first.recovered, false)
    first.storage.save({ agentSpiffeId: 'spiffe://example.org/spire/agent/x', agentKeyId: 'k1' })
    first.storage.close()
    putRaw(path, field, value)

    const again = AgentStorage.open(path)
    t.after(() => again.storage.close())
    assert.equal(again.recovered, true)
    // A fresh state: the agent attests again instead of crashing at every start.
    assert.deepEqual(again.storage.load(), {})
    const aside = readdirSync(dir).filter((f) => f.startsWith('agent.sqlite3.corrupt-'))
    assert.equal(aside.length, 1, readdirSync(dir).join(','))
  })
}

test('a state database that is not SQLite is moved aside too', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-state-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'agent.sqlite3')
  writeFileSync(path, 'this is not a database, just text long enough to have a header.........')
  const opened = AgentStorage.open(path)
  t.after(() => opened.storage.close())
  assert.equal(opened.recovered, true)
  assert.ok(existsSync(path))
})

test('state written by save() reads back unchanged', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-state-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'agent.sqlite3')
  const { storage } = AgentStorage.open(path)
  const entries = JSON.stringify([{ id: 'e1', revisionNumber: 3, selectors: [] }])
  storage.save({
    reattestable: true,
    bundle: '{"keys":[]}',
    revision: 7,
    entries,
    agentKeyId: 'k',
  })
  storage.close()
  const again = AgentStorage.open(path)
  t.after(() => again.storage.close())
  assert.equal(again.recovered, false)
  assert.deepEqual(again.storage.load(), {
    reattestable: true,
    bundle: '{"keys":[]}',
    revision: 7,
    entries,
    agentKeyId: 'k',
  })
})
