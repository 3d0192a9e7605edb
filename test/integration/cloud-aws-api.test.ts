import assert from 'node:assert/strict'
import { test } from 'node:test'
import { DEFAULT_IDENTITY } from '../../hardware-sim/cloud/index.js'
import {
  agentSelectors,
  assertRefused,
  assertSelectors,
  cloudRig,
  cloudTest,
  refusedBecause,
  registerWorkload,
  rigIn,
  serverSaid,
  siblingSim,
  workloadSvids,
} from '../helpers/cloud.js'

const { accessKeyId, secretAccessKey } = DEFAULT_IDENTITY.awsApi

test('aws_iid with EC2/IAM lookups on the simulated API: tag, sg and iamrole selectors through an assumed role; wrong credentials, API down, unknown and tampered instances refuse', async (t) => {
  const { root, sim } = await cloudTest(t, 'aws')
  const base = `account_ids = ["123456789012"]\ncertificates = { "*" = "${sim.trust}" }\n`
  const endpoints = (url: string) =>
    `ec2_endpoint = "${url}"\niam_endpoint = "${url}"\nsts_endpoint = "${url}"\napi_timeout_ms = 3000\n`
  const rig = await cloudRig(
    root,
    t,
    'aws_iid',
    `${base}access_key_id = "${accessKeyId}"\nsecret_access_key = "${secretAccessKey}"\n` +
      `assume_role = "spiffe-edge-attestor"\n${endpoints(sim.url)}`,
  )
  await serverSaid(
    rig.server,
    /aws_iid: tag:, sg:id:, sg:name:, iamrole: selectors from the cloud API \(credentials from config, assuming role spiffe-edge-attestor/,
  )
  const agentId =
    'spiffe://example.org/spire/agent/aws_iid/123456789012/us-west-2/i-0b22a22eec53b9321'
  const agent = await rig.startAgent('a1', `metadata_url = "${sim.url}"\nsignature = "rsa2048"`)
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    'aws_iid:region:us-west-2',
    'aws_iid:tag:Name:gateway-1',
    'aws_iid:tag:fleet:edge',
    'aws_iid:sg:id:sg-0a1b2c3d4e5f60718',
    'aws_iid:sg:name:edge-gateways',
    'aws_iid:iamrole:arn:aws:iam::123456789012:role/edge-gateway',
  ])
  // The entry is on a tag only the EC2 API knows: the workload's SVID proves the lookup happened.
  const app = await registerWorkload(rig.server, 'aws_iid:tag:fleet:edge', 'aws-tag')
  assert.ok((await workloadSvids(agent.socket)).includes(app))
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)

  // An instance the EC2 API does not know (its document is validly signed): refused.
  await using ghost = await siblingSim(root, sim, { instanceId: 'i-0dddddddddddddddd' })
  assertRefused(
    await rig.failAgent('ghost', `metadata_url = "${ghost.url}"\nsignature = "signature"`),
    'aws_iid',
    'instance',
  )

  // A root volume attached long after the instance booted (SPIRE's anti-tampering rule) …
  await using swapped = await siblingSim(root, sim, {
    instanceId: 'i-0eeeeeeeeeeeeeeee',
    rootVolumeAttachDelay: 600,
  })
  const strict = await rigIn(
    root,
    'strict',
    t,
    'aws_iid',
    `${base}access_key_id = "${accessKeyId}"\nsecret_access_key = "${secretAccessKey}"\n${endpoints(swapped.url)}`,
  )
  assertRefused(
    await strict.failAgent('swapped', `metadata_url = "${swapped.url}"\nsignature = "signature"`),
    'aws_iid',
    'instance',
  )

  // Wrong credentials: the API refuses them (SigV4 checked by the sim), so the server refuses.
  const wrong = await rigIn(
    root,
    'wrong',
    t,
    'aws_iid',
    `${base}access_key_id = "${accessKeyId}"\nsecret_access_key = "not-the-secret"\n${endpoints(sim.url)}`,
  )
  // (Each server has its own datastore: the instance is new to it.)
  const refusedWrong = await wrong.failAgent('wrong', `metadata_url = "${sim.url}"`)
  assertRefused(refusedWrong, 'aws_iid', 'api')
  await refusedBecause(refusedWrong, wrong.server, /AuthFailure \(HTTP 401\)/)

  // The API down: refused, not attested without the selectors.
  const down = await rigIn(
    root,
    'down',
    t,
    'aws_iid',
    `${base}access_key_id = "${accessKeyId}"\nsecret_access_key = "${secretAccessKey}"\n${endpoints('http://127.0.0.1:1')}`,
  )
  const refusedDown = await down.failAgent('down', `metadata_url = "${sim.url}"`)
  assertRefused(refusedDown, 'aws_iid', 'api')
  await refusedBecause(refusedDown, down.server, /EC2 DescribeInstances/)
  // Refused attestations record nothing: the instance is still new to that server.
  assert.equal(await down.server.admin('agent', 'list'), await wrong.server.admin('agent', 'list'))
})
