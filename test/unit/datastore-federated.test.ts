import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { openSqliteDatastore } from '../../src/server/datastore/sqlite.js'

test('federated bundles: own table, set/get/list/delete, survive a reopen, never touch our own bundle', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-dsfed-'))
  try {
    const path = join(dir, 'ds.sqlite3')
    const ds = await openSqliteDatastore(path)
    await ds.setBundle('one.test', '{"keys":[]}', 3)
    await ds.setFederatedBundle('two.test', '{"keys":[1]}', 7)
    await ds.setFederatedBundle('a.test', '{"keys":[2]}', 1)
    // The same name in both tables stays two rows: a foreign bundle never replaces ours.
    await ds.setFederatedBundle('one.test', '{"keys":[3]}', 9)
    assert.deepEqual(await ds.getBundle('one.test'), { json: '{"keys":[]}', sequence: 3 })
    assert.deepEqual(
      (await ds.listFederatedBundles()).map((r) => [r.trustDomain, r.sequence]),
      [
        ['a.test', 1],
        ['one.test', 9],
        ['two.test', 7],
      ],
    )
    await ds.setFederatedBundle('two.test', '{"keys":[4]}', 8)
    await ds.close()
    const again = await openSqliteDatastore(path)
    const row = await again.getFederatedBundle('two.test')
    assert.equal(row?.json, '{"keys":[4]}')
    assert.equal(row?.sequence, 8)
    assert.ok(row!.updatedAt > 1_700_000_000)
    await again.deleteFederatedBundle('two.test')
    assert.equal(await again.getFederatedBundle('two.test'), undefined)
    await assert.rejects(again.deleteFederatedBundle('two.test'), {
      code: 'ERR_DATASTORE_NOT_FOUND',
    })
    await assert.rejects(again.setFederatedBundle('x.test', 'not json', 1), {
      code: 'ERR_DATASTORE_INVALID',
    })
    await again.close()
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
