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

test('federation relationships: create/get/list/update/delete, conflict, limit, survive a reopen', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-dsrel-'))
  try {
    const path = join(dir, 'ds.sqlite3')
    const ds = await openSqliteDatastore(path)
    const web = {
      trustDomain: 'two.test',
      bundleEndpointUrl: 'https://two.test/',
      profile: 'https_web' as const,
      endpointSpiffeId: '',
    }
    const created = await ds.createFederationRelationship(web, 2)
    assert.equal(created.profile, 'https_web')
    assert.ok(created.createdAt > 1_700_000_000)
    await assert.rejects(ds.createFederationRelationship(web, 2), {
      code: 'ERR_DATASTORE_CONFLICT',
    })
    await ds.createFederationRelationship(
      {
        trustDomain: 'a.test',
        bundleEndpointUrl: 'https://a.test:8443/',
        profile: 'https_spiffe',
        endpointSpiffeId: 'spiffe://a.test/spire/server',
      },
      2,
    )
    // The limit is counted in the write: a third is refused.
    await assert.rejects(
      ds.createFederationRelationship({ ...web, trustDomain: 'three.test' }, 2),
      { code: 'ERR_DATASTORE_INVALID' },
    )
    // https_spiffe without an endpoint ID, or https_web with one, is refused.
    await assert.rejects(
      ds.createFederationRelationship(
        { ...web, trustDomain: 'x.test', profile: 'https_spiffe' },
        9,
      ),
      { code: 'ERR_DATASTORE_INVALID' },
    )
    await assert.rejects(
      ds.createFederationRelationship(
        { ...web, trustDomain: 'y.test', endpointSpiffeId: 'spiffe://y.test/s' },
        9,
      ),
      { code: 'ERR_DATASTORE_INVALID' },
    )
    const upd = await ds.updateFederationRelationship({
      ...web,
      bundleEndpointUrl: 'https://two.test:9443/',
      profile: 'https_spiffe',
      endpointSpiffeId: 'spiffe://two.test/spire/server',
    })
    assert.equal(upd.bundleEndpointUrl, 'https://two.test:9443/')
    await assert.rejects(ds.updateFederationRelationship({ ...web, trustDomain: 'none.test' }), {
      code: 'ERR_DATASTORE_NOT_FOUND',
    })
    await ds.close()
    const again = await openSqliteDatastore(path)
    assert.deepEqual(
      (await again.listFederationRelationships()).map((r) => [
        r.trustDomain,
        r.profile,
        r.endpointSpiffeId,
      ]),
      [
        ['a.test', 'https_spiffe', 'spiffe://a.test/spire/server'],
        ['two.test', 'https_spiffe', 'spiffe://two.test/spire/server'],
      ],
    )
    await again.deleteFederationRelationship('a.test')
    assert.equal(await again.getFederationRelationship('a.test'), undefined)
    await assert.rejects(again.deleteFederationRelationship('a.test'), {
      code: 'ERR_DATASTORE_NOT_FOUND',
    })
    await again.close()
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
