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

test('aws_iid end to end on the simulated IMDSv2: SPIRE ID and selectors, a workload SVID, each refusal', async (t) => {
  const { root, sim } = await cloudTest(t, 'aws')
  const rig = await cloudRig(
    root,
    t,
    'aws_iid',
    `account_ids = ["123456789012"]\ncertificates = { "*" = "${sim.trust}" }\nmax_document_age = 86400`,
  )
  const agentId =
    'spiffe://example.org/spire/agent/aws_iid/123456789012/us-west-2/i-0b22a22eec53b9321'

  // The /rsa2048 PKCS#7 form (openssl-signed by the sim, verified by our CMS code).
  const agent = await rig.startAgent('a1', `metadata_url = "${sim.url}"\nsignature = "rsa2048"`)
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    'aws_iid:az:us-west-2b',
    'aws_iid:image:id:ami-5fb8c835',
    'aws_iid:instance:id:i-0b22a22eec53b9321',
    'aws_iid:region:us-west-2',
  ])
  // No credentials configured: the API-derived selectors are absent, and the server said so.
  assert.ok(!sels.some((s) => /^aws_iid:(tag|sg|iamrole):/.test(s)), sels.join(' '))
  await serverSaid(
    rig.server,
    /aws_iid: no cloud API credentials configured: tag:, sg:id:, sg:name:, iamrole: selectors are off/,
  )
  const app = await registerWorkload(rig.server, 'aws_iid:region:us-west-2', 'aws')
  assert.ok((await workloadSvids(agent.socket)).includes(app))

  // The same instance again (a copied document): trust on first use refuses it …
  assertRefused(
    await rig.failAgent('replay', `metadata_url = "${sim.url}"\nsignature = "pkcs7"`),
    'aws_iid',
    'replay',
  )
  // A restart of the attested agent is not a second attestation: it resumes with its stored SVID.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  const restarted = await rig.restartAgent('a1')
  assert.equal(restarted.first.agent_id, agentId)
  restarted.child.kill('SIGTERM')
  assert.equal(await restarted.exited, 0)
  // … until the agent is evicted; then the instance attests again (the plain /signature form).
  await rig.server.admin('agent', 'evict', '--spiffeID', agentId)
  const again = await rig.startAgent('a2', `metadata_url = "${sim.url}"\nsignature = "signature"`)
  assert.equal(again.first.agent_id, agentId)
  again.child.kill('SIGTERM')
  assert.equal(await again.exited, 0)

  // Another account, signed by the same trusted key: not in account_ids.
  await using other = await siblingSim(root, sim, {
    accountId: '999999999999',
    instanceId: 'i-0aaaaaaaaaaaaaaaa',
  })
  assertRefused(
    await rig.failAgent('account', `metadata_url = "${other.url}"`),
    'aws_iid',
    'account',
  )
  // A document older than max_document_age (the /signature form carries no signing time).
  await using old = await siblingSim(root, sim, {
    instanceId: 'i-0bbbbbbbbbbbbbbbb',
    pendingTime: '2020-01-01T00:00:00Z',
  })
  assertRefused(
    await rig.failAgent('old', `metadata_url = "${old.url}"\nsignature = "signature"`),
    'aws_iid',
    'expired',
  )
  // A metadata service signing with a key the server does not trust.
  await using stranger = await startCloudSim({
    kind: 'aws',
    identity: { instanceId: 'i-0cccccccccccccccc' },
  })
  assertRefused(
    await rig.failAgent('stranger', `metadata_url = "${stranger.url}"\nsignature = "rsa2048"`),
    'aws_iid',
    'signature',
  )
  // No metadata service: the agent says so itself, before the server is asked.
  const down = await rig.failAgent('down', 'metadata_url = "http://127.0.0.1:1"\ntimeout_ms = 2000')
  assert.equal(down.code, 1)
  assert.match(
    down.stderr,
    /error\[ERR_CLOUD_METADATA\]: getting an IMDSv2 session token/,
    down.stderr,
  )
})
