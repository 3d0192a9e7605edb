import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
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

test('gcp_iit with use_instance_metadata on the simulated Compute API: label, metadata, tag selectors; wrong credentials, API down and an unknown instance refuse', async (t) => {
  const { root, sim } = await cloudTest(t, 'gcp')
  assert.ok(sim.credentials, 'the gcp sim writes a service-account key file')
  const base = `projectid_allow_list = ["edge-fleet-sim"]\njwks_file = "${sim.trust}"\n`
  const api = (file: string, endpoint: string) =>
    `use_instance_metadata = true\nservice_account_file = "${file}"\n` +
    `allowed_label_keys = ["fleet"]\nallowed_metadata_keys = ["role"]\n` +
    `compute_endpoint = "${endpoint}"\napi_timeout_ms = 3000\n`
  const rig = await cloudRig(root, t, 'gcp_iit', base + api(sim.credentials, sim.url))
  await serverSaid(
    rig.server,
    /gcp_iit: tag:, label:, metadata: and instance sa: selectors from the cloud API \(service account spiffe-edge-attestor@edge-fleet-sim\.iam\.gserviceaccount\.com/,
  )
  const agentId = 'spiffe://example.org/spire/agent/gcp_iit/edge-fleet-sim/4710471047104710471'
  const agent = await rig.startAgent('a1', `metadata_url = "${sim.url}"`)
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    'gcp_iit:project-id:edge-fleet-sim',
    'gcp_iit:label:fleet:edge',
    'gcp_iit:metadata:role:gateway',
    'gcp_iit:tag:edge-gateway',
    'gcp_iit:tag:http-server',
    'gcp_iit:sa:471104711047-compute@developer.gserviceaccount.com',
  ])
  // Only the allowed keys become selectors (SPIRE's allowed_label_keys / allowed_metadata_keys).
  assert.ok(!sels.some((s) => s.startsWith('gcp_iit:label:env:')), sels.join(' '))
  assert.ok(!sels.some((s) => s.startsWith('gcp_iit:metadata:startup-script:')), sels.join(' '))
  // The sa: selector from the token and from the API is recorded once.
  assert.equal(sels.filter((s) => s.startsWith('gcp_iit:sa:')).length, 1, sels.join(' '))
  // The entry is on a label only the Compute API knows: the SVID proves the lookup happened.
  const app = await registerWorkload(rig.server, 'gcp_iit:label:fleet:edge', 'gcp-label')
  assert.ok((await workloadSvids(agent.socket)).includes(app))
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)

  // A validly signed token for an instance the Compute API does not know: refused.
  await using ghost = await siblingSim(root, sim, {
    gcpInstanceId: '4710471047104710999',
    instanceName: 'ghost-1',
  })
  assertRefused(
    await rig.failAgent('ghost', `metadata_url = "${ghost.url}"`),
    'gcp_iit',
    'instance',
  )

  // Wrong credentials: the key file names the account but holds another key; the sim's token
  // endpoint checks the assertion's signature against the account's public key and refuses.
  const wrongFile = join(root, 'wrong-sa.json')
  const sa = JSON.parse(readFileSync(sim.credentials, 'utf8')) as Record<string, unknown>
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  sa.private_key = privateKey.export({ type: 'pkcs8', format: 'pem' })
  writeFileSync(wrongFile, JSON.stringify(sa), { mode: 0o600 })
  const wrong = await rigIn(root, 'wrong', t, 'gcp_iit', base + api(wrongFile, sim.url))
  const refusedWrong = await wrong.failAgent('wrong', `metadata_url = "${sim.url}"`)
  assertRefused(refusedWrong, 'gcp_iit', 'api')
  await refusedBecause(refusedWrong, wrong.server, /HTTP 400: invalid_grant: Invalid JWT Signature/)

  // The Compute API down: refused, not attested without the selectors.
  const down = await rigIn(
    root,
    'down',
    t,
    'gcp_iit',
    base + api(sim.credentials, 'http://127.0.0.1:1'),
  )
  const refusedDown = await down.failAgent('down', `metadata_url = "${sim.url}"`)
  assertRefused(refusedDown, 'gcp_iit', 'api')
  await refusedBecause(refusedDown, down.server, /Compute instances\.get edge-fleet-sim/)
  // Refused attestations record nothing: the instance is still new to that server.
  assert.equal(await down.server.admin('agent', 'list'), await wrong.server.admin('agent', 'list'))
})
