import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { type CloudIdentity, DEFAULT_IDENTITY } from '../../hardware-sim/cloud/index.js'
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

const I = DEFAULT_IDENTITY
const resource = 'api://spiffe-edge-node-attestation'

test('azure_msi with Resource Manager lookups on the simulated AAD/ARM: network selectors by client secret and by the server MSI; wrong secret, ARM down, an oversized or late answer and an unknown VM refuse', async (t) => {
  const { root, sim } = await cloudTest(t, 'azure')
  const tenant = (creds: string) =>
    `tenants = { "${I.tenantId}" = { resource_id = "${resource}", jwks_file = "${sim.trust}", ${creds} } }\n`
  const secret = (s: string = I.azureApi.clientSecret) =>
    `app_id = "${I.azureApi.clientId}", app_secret = "${s}", subscription_id = "${I.subscriptionId}"`
  const endpoints = (aad: string, arm: string, timeoutMs = 3000) =>
    `authority_url = "${aad}"\nresource_manager_endpoint = "${arm}"\napi_timeout_ms = ${timeoutMs}\n`
  const agentToml = (url: string) => `metadata_url = "${url}"\nresource_id = "${resource}"`
  const agentId = `spiffe://example.org/spire/agent/azure_msi/${I.tenantId}/${I.principalId}`
  const network = [
    'azure_msi:network-security-group:network:frontend-nsg',
    'azure_msi:virtual-network:network:edge-vnet',
    'azure_msi:virtual-network-subnet:network:edge-vnet:gateways',
  ]

  const rig = await cloudRig(root, t, 'azure_msi', tenant(secret()) + endpoints(sim.url, sim.url))
  await serverSaid(
    rig.server,
    /azure_msi: network-security-group:, virtual-network:, virtual-network-subnet: selectors from the cloud API \(tenant 72f988bf-86f1-41af-91ab-2d7cd011db47: app 0b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d via http:\/\/127\.0\.0\.1:\d+, Resource Manager at/,
  )
  // SPIRE's app_secret in the config still works, with a warning that does not quote it.
  await serverSaid(rig.server, /app_secret: the client secret is in the config file/)
  assert.ok(!rig.server.stderr().includes(I.azureApi.clientSecret))
  const agent = await rig.startAgent('a1', agentToml(sim.url))
  assert.equal(agent.first.agent_id, agentId)
  const sels = await agentSelectors(rig.server, agentId)
  assertSelectors(sels, [
    `azure_msi:subscription-id:${I.subscriptionId}`,
    'azure_msi:vm-name:frontend:blog',
    ...network,
  ])
  // The entry is on a subnet only Resource Manager knows: the SVID proves the lookup happened.
  const app = await registerWorkload(
    rig.server,
    'azure_msi:virtual-network-subnet:network:edge-vnet:gateways',
    'azure-subnet',
  )
  assert.ok((await workloadSvids(agent.socket)).includes(app))
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)

  // The server's own managed identity (IMDS token for Resource Manager) instead of a secret.
  const msi = await rigIn(
    root,
    'msi',
    t,
    'azure_msi',
    `${tenant('use_msi = true')}${endpoints(sim.url, sim.url)}msi_endpoint = "${sim.url}"\n`,
  )
  await serverSaid(msi.server, /tenant [0-9a-f-]+: the server's managed identity via http/)
  const viaMsi = await msi.startAgent('m1', agentToml(sim.url))
  assertSelectors(await agentSelectors(msi.server, agentId), network)
  viaMsi.child.kill('SIGTERM')
  assert.equal(await viaMsi.exited, 0)

  // A validly signed token naming a VM Resource Manager does not know: refused.
  await using ghost = await siblingSim(root, sim, {
    vmName: 'ghost',
    principalId: '44444444-2222-3333-4444-555555555555',
  })
  assertRefused(await rig.failAgent('ghost', agentToml(ghost.url)), 'azure_msi', 'instance')

  // A wrong client secret: AAD refuses it, so the attestation is refused, saying why.
  const wrong = await rigIn(
    root,
    'wrong',
    t,
    'azure_msi',
    tenant(secret('not-the-secret')) + endpoints(sim.url, sim.url),
  )
  const refusedWrong = await wrong.failAgent('wrong', agentToml(sim.url))
  assertRefused(refusedWrong, 'azure_msi', 'api')
  await refusedBecause(refusedWrong, wrong.server, /HTTP 401: invalid_client: AADSTS7000215/)

  // Resource Manager down: refused, not attested without the selectors.
  const down = await rigIn(
    root,
    'down',
    t,
    'azure_msi',
    tenant(secret()) + endpoints(sim.url, 'http://127.0.0.1:1'),
  )
  const refusedDown = await down.failAgent('down', agentToml(sim.url))
  assertRefused(refusedDown, 'azure_msi', 'api')
  await refusedBecause(refusedDown, down.server, /virtualMachines\.get frontend\/blog/)

  // An answer over the 1 MiB cap, and one later than api_timeout_ms.
  await using big = await siblingSim(root, sim, { armFault: 'oversize' })
  const oversized = await rigIn(
    root,
    'big',
    t,
    'azure_msi',
    tenant(secret()) + endpoints(big.url, big.url),
  )
  const refusedBig = await oversized.failAgent('big', agentToml(big.url))
  assertRefused(refusedBig, 'azure_msi', 'api')
  await refusedBecause(refusedBig, oversized.server, /over 1048576/)
  await using slow = await siblingSim(root, sim, { armFault: 'slow' })
  const late = await rigIn(
    root,
    'slow',
    t,
    'azure_msi',
    tenant(secret()) + endpoints(slow.url, slow.url, 1500),
  )
  const started = Date.now()
  const refusedSlow = await late.failAgent('slow', agentToml(slow.url))
  assertRefused(refusedSlow, 'azure_msi', 'api')
  await refusedBecause(refusedSlow, late.server, /no answer in time/)
  assert.ok(Date.now() - started < 15_000, `refused after ${Date.now() - started} ms`)
  // Refused attestations record nothing.
  assert.equal(await down.server.admin('agent', 'list'), await wrong.server.admin('agent', 'list'))
})

test('azure_msi with a user-assigned identity: Resource Manager finds its one VM among paged VMs (network selectors, vm-name, an SVID on the subnet); a shared identity, a detached one and a list over the cap refuse', async (t) => {
  const uai: NonNullable<CloudIdentity['userAssigned']> = {
    resourceGroup: 'identities',
    name: 'edge-gateway-id',
    principalId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
    clientId: '6f1d2b3a-9c8e-4d7f-a6b5-c4d3e2f1a0b9',
  }
  // No system-assigned identity: IMDS answers with the user-assigned one, as Azure does. 250 more
  // VMs in the subscription: three pages of Resources - List before the VM is known.
  const vmWith = (extra: CloudIdentity = {}): CloudIdentity => ({
    userAssigned: uai,
    systemAssigned: false,
    otherVms: { count: 250 },
    ...extra,
  })
  const { root, sim } = await cloudTest(t, 'azure', vmWith())
  // The secret from a 0600 file (app_secret_file), not the config.
  const secretFile = join(root, 'azure-app-secret')
  writeFileSync(secretFile, `${I.azureApi.clientSecret}\n`, { mode: 0o600 })
  const rule = `tenants = { "${I.tenantId}" = { resource_id = "${resource}", jwks_file = "${sim.trust}", app_id = "${I.azureApi.clientId}", app_secret_file = "${secretFile}", subscription_id = "${I.subscriptionId}" } }\n`
  const endpoints = (url: string) =>
    `authority_url = "${url}"\nresource_manager_endpoint = "${url}"\napi_timeout_ms = 3000\n`
  const agentToml = (url: string) => `metadata_url = "${url}"\nresource_id = "${resource}"`
  const rig = await cloudRig(root, t, 'azure_msi', rule + endpoints(sim.url))
  const agent = await rig.startAgent('u1', agentToml(sim.url))
  const agentId = `spiffe://example.org/spire/agent/azure_msi/${I.tenantId}/${uai.principalId}`
  assert.equal(agent.first.agent_id, agentId)
  assertSelectors(await agentSelectors(rig.server, agentId), [
    `azure_msi:subscription-id:${I.subscriptionId}`,
    'azure_msi:vm-name:frontend:blog',
    'azure_msi:network-security-group:network:frontend-nsg',
    'azure_msi:virtual-network:network:edge-vnet',
    'azure_msi:virtual-network-subnet:network:edge-vnet:gateways',
  ])
  // vm-name comes only from the list: the token names the identity, not the VM.
  const app = await registerWorkload(rig.server, 'azure_msi:vm-name:frontend:blog', 'azure-uai')
  assert.ok((await workloadSvids(agent.socket)).includes(app))
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)

  // Two more VMs carry the same identity: its token does not say which VM it came from.
  await using shared = await siblingSim(root, sim, vmWith({ otherVms: { count: 250, shared: 2 } }))
  const s = await rigIn(root, 'shared', t, 'azure_msi', rule + endpoints(shared.url))
  const refusedShared = await s.failAgent('shared', agentToml(shared.url))
  assertRefused(refusedShared, 'azure_msi', 'instance')
  await refusedBecause(refusedShared, s.server, /3 VMs carry the identity/)

  // The identity signs tokens but no VM in the subscription carries it (detached): refused.
  await using detached = await siblingSim(
    root,
    sim,
    vmWith({ userAssigned: { ...uai, name: 'elsewhere-id' } }),
  )
  const d = await rigIn(root, 'detached', t, 'azure_msi', rule + endpoints(detached.url))
  // The sibling's VM carries elsewhere-id; a token for edge-gateway-id comes from a third sim.
  const refusedDetached = await d.failAgent('detached', agentToml(sim.url))
  assertRefused(refusedDetached, 'azure_msi', 'instance')
  await refusedBecause(refusedDetached, d.server, /no VM carries the identity/)

  // More VMs than the list cap: refused unresolved, not matched on a partial list.
  await using crowded = await siblingSim(root, sim, vmWith({ otherVms: { count: 2100 } }))
  const c = await rigIn(root, 'crowded', t, 'azure_msi', rule + endpoints(crowded.url))
  const refusedCrowded = await c.failAgent('crowded', agentToml(crowded.url))
  assertRefused(refusedCrowded, 'azure_msi', 'api')
  await refusedBecause(refusedCrowded, c.server, /more than (2000 VMs|20 pages)/)
})
