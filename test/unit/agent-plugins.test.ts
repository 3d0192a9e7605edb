import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import {
  NODE_ATTESTORS,
  nodeIdentity,
  WORKLOAD_ATTESTORS,
  workloadAttestors,
} from '../../src/agent/plugins.js'

const config = (plugins: string) =>
  parseAgentConfig(
    `[agent]\ntrust_domain = "example.org"\nserver_address = "127.0.0.1:1"\ndata_dir = "/nonexistent/a"\n` +
      `insecure_bootstrap = true\n${plugins}`,
    '/nonexistent/agent.conf',
  )

test('agent plugins come from catalogs; unknown names are refused listing what exists', async () => {
  assert.deepEqual(
    [...NODE_ATTESTORS.keys()],
    ['join_token', 'tpm', 'aws_iid', 'gcp_iit', 'azure_msi'],
  )
  assert.deepEqual([...WORKLOAD_ATTESTORS.keys()], ['unix', 'systemd', 'docker'])
  const ok = config(
    '[plugins.NodeAttestor.join_token]\n[plugins.WorkloadAttestor.unix]\n[plugins.WorkloadAttestor.systemd]\n',
  )
  assert.deepEqual(
    workloadAttestors(ok).map((a) => a.name),
    ['unix', 'systemd'],
  )
  const id = await nodeIdentity(ok)
  assert.equal(id.attestor.name, 'join_token')
  await id.close()

  const bad = config(
    '[plugins.NodeAttestor.k8s_psat]\n[plugins.WorkloadAttestor.k8s]\n[plugins.WorkloadAttestor.unix]\nbogus = 1\n',
  )
  assert.throws(
    () => workloadAttestors(bad),
    (e: Error & { code?: string }) =>
      e.code === 'ERR_CONFIG' &&
      /k8s: unknown workload attestor \(this agent has: unix, systemd, docker\)/.test(e.message) &&
      /unix: unknown keys bogus/.test(e.message),
  )
  assert.throws(
    () => nodeIdentity(bad),
    /k8s_psat: unknown node attestor \(this agent has: join_token, tpm, aws_iid, gcp_iit, azure_msi\)/,
  )
})
