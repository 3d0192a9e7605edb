import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { DEFAULT_IDENTITY } from '../../hardware-sim/cloud/index.js'
import {
  agentSelectors,
  assertRefused,
  assertSelectors,
  cloudTest,
  refusedBecause,
  registerWorkload,
  rigIn,
  serverSaid,
  workloadSvids,
} from '../helpers/cloud.js'

const agentId = 'spiffe://example.org/spire/agent/gcp_iit/edge-fleet-sim/4710471047104710471'

test("gcp_iit use_instance_metadata with Application Default Credentials: an authorized_user file from GOOGLE_APPLICATION_CREDENTIALS, then the GCE metadata server's token; a bad refresh token or no metadata server refuse", async (t) => {
  const { root, sim } = await cloudTest(t, 'gcp')
  const toml =
    `projectid_allow_list = ["edge-fleet-sim"]\njwks_file = "${sim.trust}"\n` +
    `use_instance_metadata = true\nallowed_label_keys = ["fleet"]\n` +
    `compute_endpoint = "${sim.url}"\napi_timeout_ms = 3000\n`
  // The server's environment without any ambient Google credentials; HOME has no gcloud file.
  const base: NodeJS.ProcessEnv = { ...process.env, HOME: root }
  for (const k of ['GOOGLE_APPLICATION_CREDENTIALS', 'CLOUDSDK_CONFIG', 'GCE_METADATA_HOST'])
    delete base[k]
  const user = (refreshToken: string) => {
    const file = join(root, `user-${refreshToken.length}.json`)
    const u = DEFAULT_IDENTITY.gcpUser
    // What `gcloud auth application-default login` writes (token_uri: the simulator's).
    const o = {
      type: 'authorized_user',
      client_id: u.clientId,
      client_secret: u.clientSecret,
      refresh_token: refreshToken,
      token_uri: `${sim.url}/token`,
    }
    writeFileSync(file, JSON.stringify(o), { mode: 0o600 })
    return file
  }
  const agentToml = `metadata_url = "${sim.url}"`

  const viaUser = await rigIn(root, 'user', t, 'gcp_iit', toml, {
    ...base,
    GOOGLE_APPLICATION_CREDENTIALS: user(DEFAULT_IDENTITY.gcpUser.refreshToken),
  })
  await serverSaid(viaUser.server, /selectors from the cloud API \(authorized user from /)
  const a1 = await viaUser.startAgent('a1', agentToml)
  assert.equal(a1.first.agent_id, agentId)
  assertSelectors(await agentSelectors(viaUser.server, agentId), ['gcp_iit:label:fleet:edge'])
  const app = await registerWorkload(viaUser.server, 'gcp_iit:label:fleet:edge', 'adc-user')
  assert.ok((await workloadSvids(a1.socket)).includes(app))
  a1.child.kill('SIGTERM')
  assert.equal(await a1.exited, 0)

  // No credentials file anywhere: the token of the VM's own service account, from its metadata
  // server (GCE_METADATA_HOST, as Google's libraries read it).
  const viaMetadata = await rigIn(root, 'metadata', t, 'gcp_iit', toml, {
    ...base,
    GCE_METADATA_HOST: `127.0.0.1:${sim.port}`,
  })
  await serverSaid(
    viaMetadata.server,
    /selectors from the cloud API \(the instance's service account via the metadata server http:\/\/127\.0\.0\.1:\d+/,
  )
  const a2 = await viaMetadata.startAgent('a2', agentToml)
  assertSelectors(await agentSelectors(viaMetadata.server, agentId), ['gcp_iit:label:fleet:edge'])
  a2.child.kill('SIGTERM')
  assert.equal(await a2.exited, 0)

  // A refresh token the token endpoint does not know: refused, saying so.
  const revoked = await rigIn(root, 'revoked', t, 'gcp_iit', toml, {
    ...base,
    GOOGLE_APPLICATION_CREDENTIALS: user('1//revoked'),
  })
  const refusedRevoked = await revoked.failAgent('revoked', agentToml)
  assertRefused(refusedRevoked, 'gcp_iit', 'api')
  await refusedBecause(refusedRevoked, revoked.server, /HTTP 400: invalid_grant/)

  // Not on GCE (no metadata server answers): refused, not attested without the selectors.
  const offGce = await rigIn(root, 'off-gce', t, 'gcp_iit', toml, {
    ...base,
    GCE_METADATA_HOST: '127.0.0.1:1',
  })
  const refusedOff = await offGce.failAgent('off-gce', agentToml)
  assertRefused(refusedOff, 'gcp_iit', 'api')
  await refusedBecause(refusedOff, offGce.server, /access token from the GCE metadata server/)
})
