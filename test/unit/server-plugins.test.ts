import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openMemoryDatastore } from '../../src/server/datastore/sqlite.js'
import { buildNodeAttestors, NODE_ATTESTORS } from '../../src/server/plugins.js'

test('node attestors come from the catalog; an unknown one is refused with the list of what exists', async () => {
  const datastore = await openMemoryDatastore()
  try {
    const ctx = { datastore, configDir: '/', log: () => undefined }
    const built = buildNodeAttestors(new Map([['join_token', {}]]), ctx)
    assert.deepEqual([...built.keys()], ['join_token'])
    assert.deepEqual(
      [...NODE_ATTESTORS.keys()],
      ['join_token', 'tpm', 'aws_iid', 'gcp_iit', 'azure_msi'],
    )
    assert.throws(
      () =>
        buildNodeAttestors(
          new Map([
            ['k8s_psat', {}],
            ['join_token', {}],
          ]),
          ctx,
        ),
      (e: Error & { code?: string }) =>
        e.code === 'ERR_CONFIG' &&
        /k8s_psat: unknown node attestor \(this server has: join_token, tpm, aws_iid, gcp_iit, azure_msi\)/.test(
          e.message,
        ),
    )
    assert.throws(
      () => buildNodeAttestors(new Map([['join_token', { x: 1 }]]), ctx),
      /takes no settings/,
    )
  } finally {
    await datastore.close()
  }
})
