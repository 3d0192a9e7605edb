import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startCloudSim } from '../../hardware-sim/cloud/index.js'
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

test('gcp_iit end to end on the simulated metadata server: SPIRE ID and selectors, a workload SVID, each refusal', async (t) => {
  const { root, sim } = await cloudTest(t, 'gcp')
  const rig = await cloudRig(
    root,
    t,
    'gcp_iit',
    `projectid_allow_list = ["edge-fleet-sim"]\njwks_file = "${sim.trust}"`,
  )
  // Without use_instance_metadata the API selectors are absent, and the server says so at start.
  await serverSaid(
    rig.server,
    /gcp_iit: use_instance_metadata is off: tag:, label:, metadata: and instance sa: selectors are off/,
  )
  const agentId = 'spiffe://example.org/spire/agent/gcp_iit/edge-fleet-sim/4710471047104710471'

  const agent = await rig.startAgent('a1', `metadata_url = "${sim.url}"`)
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    'gcp_iit:project-id:edge-fleet-sim',
    'gcp_iit:zone:europe-west1-b',
    'gcp_iit:instance-name:gateway-1',
    'gcp_iit:sa:471104711047-compute@developer.gserviceaccount.com',
  ])
  const app = await registerWorkload(rig.server, 'gcp_iit:zone:europe-west1-b', 'gcp')
  assert.ok((await workloadSvids(agent.socket)).includes(app))

  assertRefused(await rig.failAgent('replay', `metadata_url = "${sim.url}"`), 'gcp_iit', 'replay')
  assertRefused(
    await rig.failAgent('audience', `metadata_url = "${sim.url}"\naudience = "some-other-service"`),
    'gcp_iit',
    'audience',
  )
  await using other = await siblingSim(root, sim, {
    projectId: 'other-project',
    gcpInstanceId: '1111111111111111111',
  })
  assertRefused(
    await rig.failAgent('project', `metadata_url = "${other.url}"`),
    'gcp_iit',
    'project',
  )
  await using expired = await siblingSim(root, sim, {
    lifetimeSeconds: -600,
    gcpInstanceId: '2222222222222222222',
  })
  assertRefused(
    await rig.failAgent('expired', `metadata_url = "${expired.url}"`),
    'gcp_iit',
    'expired',
  )
  await using stranger = await startCloudSim({
    kind: 'gcp',
    identity: { gcpInstanceId: '3333333333333333333' },
  })
  assertRefused(
    await rig.failAgent('stranger', `metadata_url = "${stranger.url}"`),
    'gcp_iit',
    'signature',
  )
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
})
