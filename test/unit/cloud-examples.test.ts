import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import { nodeIdentity } from '../../src/agent/plugins.js'
import { parseServerConfig } from '../../src/server/config.js'
import { openMemoryDatastore } from '../../src/server/datastore/sqlite.js'
import { buildNodeAttestors } from '../../src/server/plugins.js'
import { repoRoot } from '../helpers/exec.js'

const dir = join(repoRoot, 'examples', 'cloud')

test('examples/cloud: the server config builds all three cloud attestors', async () => {
  const file = join(dir, 'server.conf')
  const cfg = parseServerConfig(readFileSync(file, 'utf8'), file)
  const datastore = await openMemoryDatastore()
  try {
    const built = buildNodeAttestors(cfg.nodeAttestors, {
      datastore,
      configDir: dir,
      log: () => undefined,
    })
    assert.deepEqual([...built.keys()].sort(), ['aws_iid', 'azure_msi', 'gcp_iit'])
  } finally {
    await datastore.close()
  }
})

test('examples/cloud: each agent config yields its cloud attestor', async () => {
  for (const [file, name] of [
    ['agent-aws.conf', 'aws_iid'],
    ['agent-gcp.conf', 'gcp_iit'],
    ['agent-azure.conf', 'azure_msi'],
  ] as const) {
    const path = join(dir, file)
    const cfg = parseAgentConfig(readFileSync(path, 'utf8'), path)
    const id = await nodeIdentity(cfg)
    assert.equal(id.attestor.name, name)
    await id.close()
  }
})
