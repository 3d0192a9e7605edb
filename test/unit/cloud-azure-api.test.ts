import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ensureCloudKeys } from '../../hardware-sim/cloud/keys.js'
import { DEFAULT_IDENTITY, serveCloudMetadata } from '../../hardware-sim/cloud/service.js'
import { AzureApi, type AzureApiConfig } from '../../src/attestors/cloud/azure/arm.js'
import { azureApis, parseAzureServerConfig } from '../../src/attestors/cloud/azure/server.js'
import { CloudAttestationError } from '../../src/attestors/cloud/common.js'

const I = DEFAULT_IDENTITY
const refused = (reason: string, re: RegExp) => (e: unknown) =>
  e instanceof CloudAttestationError &&
  e.reason === reason &&
  (reason === 'api' ? e.code === 'ERR_CLOUD_API' : e.code === 'ERR_ATTESTATION_FAILED') &&
  re.test(e.message)

async function simRig(t: { after: (f: () => Promise<void> | void) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-azure-api-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = await ensureCloudKeys(dir, 'azure')
  const { server, port } = await serveCloudMetadata('azure', keys, {}, 0)
  t.after(
    () =>
      new Promise<void>((r) => {
        ;(server as Server).closeAllConnections()
        server.close(() => r())
      }),
  )
  writeFileSync(join(dir, 'jwks.json'), readFileSync(keys.trustFile))
  return { dir, url: `http://127.0.0.1:${port}` }
}

const tenantWith = (extra: Record<string, unknown>) => ({
  tenants: { [I.tenantId]: { jwks_file: 'jwks.json', ...extra } },
})
const secret = { app_id: I.azureApi.clientId, app_secret: I.azureApi.clientSecret }

test('azure_msi config: lookups off without credentials; half or conflicting credentials, a bad subscription_id or a plain-http remote endpoint refuse the config', async (t) => {
  const { dir } = await simRig(t)
  assert.deepEqual(azureApis(parseAzureServerConfig(tenantWith({}), dir)), [])
  const on = azureApis(parseAzureServerConfig(tenantWith(secret), dir))
  assert.equal(on.length, 1)
  assert.equal(on[0]?.credential.kind, 'secret')
  assert.equal(on[0]?.resourceManager, 'https://management.azure.com')
  const msi = azureApis(parseAzureServerConfig(tenantWith({ use_msi: true }), dir))
  assert.deepEqual(msi[0]?.credential, { kind: 'msi' })
  const bad = (extra: Record<string, unknown>, top: Record<string, unknown>, re: RegExp) =>
    assert.throws(() => parseAzureServerConfig({ ...tenantWith(extra), ...top }, dir), re)
  bad({ app_id: I.azureApi.clientId }, {}, /app_id and app_secret: set both/)
  bad({ ...secret, use_msi: true }, {}, /use_msi: set it or app_id\/app_secret, not both/)
  bad({ subscription_id: I.subscriptionId }, {}, /subscription_id: needs app_id\/app_secret/)
  bad({ ...secret, subscription_id: 'prod' }, {}, /subscription_id: not a subscription ID/)
  bad(secret, { authority_url: 'http://login.example.com' }, /authority_url: .* must be https/)
  bad(secret, { msi_endpoint: 'http://imds.example.com' }, /msi_endpoint: .* must be https/)
  // IMDS is plain http on its link-local address.
  const imds = parseAzureServerConfig(
    { ...tenantWith({ use_msi: true }), msi_endpoint: 'http://169.254.169.254' },
    dir,
  )
  assert.equal(azureApis(imds)[0]?.msiEndpoint, 'http://169.254.169.254')
})

test('AzureApi against the simulated AAD and Resource Manager: selectors; another identity, another subscription, a non-VM resource ID and an unknown VM refuse', async (t) => {
  const { dir, url } = await simRig(t)
  const cfg = azureApis(
    parseAzureServerConfig(
      { ...tenantWith(secret), authority_url: url, resource_manager_endpoint: url },
      dir,
    ),
  )[0] as AzureApiConfig
  const api = new AzureApi(cfg)
  const vm = `/subscriptions/${I.subscriptionId}/resourcegroups/${I.resourceGroup}/providers/Microsoft.Compute/virtualMachines/${I.vmName}`
  const now = Date.now()
  const values = (await api.selectors(vm, I.principalId, now)).map((s) => s.value)
  assert.deepEqual(values, [
    'network-security-group:network:frontend-nsg',
    'virtual-network-subnet:network:edge-vnet:gateways',
    'virtual-network:network:edge-vnet',
  ])
  await assert.rejects(
    api.selectors(vm, '99999999-2222-3333-4444-555555555555', now),
    refused('instance', /the VM's identity is .*deleted and recreated/),
  )
  await assert.rejects(
    new AzureApi({ ...cfg, subscriptionId: '00000000-0000-0000-0000-000000000000' }).selectors(
      vm,
      I.principalId,
      now,
    ),
    refused('instance', /not the tenant's subscription_id/),
  )
  await assert.rejects(
    api.selectors(vm.replace(I.vmName, 'ghost'), I.principalId, now),
    refused('instance', /ResourceNotFound/),
  )
  await assert.rejects(
    api.selectors(
      `/subscriptions/${I.subscriptionId}/resourcegroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/edge`,
      I.principalId,
      now,
    ),
    refused('claims', /is not a VM/),
  )
  // Another tenant's token endpoint answer (AAD: tenant not found) is the server's problem.
  await assert.rejects(
    new AzureApi({ ...cfg, tenant: '11111111-2222-3333-4444-555555555555' }).selectors(
      vm,
      I.principalId,
      now,
    ),
    refused('api', /HTTP 400: invalid_tenant: AADSTS90002/),
  )
})
