import assert from 'node:assert/strict'
import { test } from 'node:test'
import { DEFAULT_IDENTITY, startCloudSim } from '../../hardware-sim/cloud/index.js'
import {
  agentSelectors,
  assertRefused,
  assertSelectors,
  cloudRig,
  cloudTest,
  registerWorkload,
  serverSaid,
  siblingSim,
  workloadSvids,
} from '../helpers/cloud.js'

test('azure_msi end to end on the simulated IMDS: SPIRE ID and selectors, a workload SVID, each refusal', async (t) => {
  const { root, sim } = await cloudTest(t, 'azure')
  const tenant = DEFAULT_IDENTITY.tenantId
  const resource = 'api://spiffe-edge-node-attestation'
  const rig = await cloudRig(
    root,
    t,
    'azure_msi',
    `tenants = { "${tenant}" = { resource_id = "${resource}", jwks_file = "${sim.trust}" } }`,
  )
  // No tenant credentials: the Resource Manager selectors are off, and the server says so.
  await serverSaid(
    rig.server,
    /azure_msi: no tenant has app_id\/app_secret or use_msi: network-security-group:, virtual-network:, virtual-network-subnet: selectors are off/,
  )
  const agentId = `spiffe://example.org/spire/agent/azure_msi/${tenant}/${DEFAULT_IDENTITY.principalId}`
  const toml = (url: string, res = resource) => `metadata_url = "${url}"\nresource_id = "${res}"`

  const agent = await rig.startAgent('a1', toml(sim.url))
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    `azure_msi:subscription-id:${DEFAULT_IDENTITY.subscriptionId}`,
    'azure_msi:vm-name:frontend:blog',
  ])
  const app = await registerWorkload(rig.server, 'azure_msi:vm-name:frontend:blog', 'azure')
  assert.ok((await workloadSvids(agent.socket)).includes(app))

  assertRefused(await rig.failAgent('replay', toml(sim.url)), 'azure_msi', 'replay')
  // The default resource (Resource Manager) is not the one this server accepts.
  assertRefused(
    await rig.failAgent('audience', `metadata_url = "${sim.url}"`),
    'azure_msi',
    'audience',
  )
  await using other = await siblingSim(root, sim, {
    tenantId: '11111111-2222-3333-4444-555555555555',
  })
  assertRefused(await rig.failAgent('tenant', toml(other.url)), 'azure_msi', 'tenant')
  await using expired = await siblingSim(root, sim, {
    lifetimeSeconds: -600,
    principalId: '22222222-2222-3333-4444-555555555555',
  })
  assertRefused(await rig.failAgent('expired', toml(expired.url)), 'azure_msi', 'expired')
  await using stranger = await startCloudSim({
    kind: 'azure',
    identity: { principalId: '33333333-2222-3333-4444-555555555555' },
  })
  assertRefused(await rig.failAgent('stranger', toml(stranger.url)), 'azure_msi', 'signature')
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
})
