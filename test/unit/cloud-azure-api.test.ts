import assert from 'node:assert/strict'
import {
  chmodSync,
  chownSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ensureCloudKeys } from '../../hardware-sim/cloud/keys.js'
import {
  type CloudIdentity,
  DEFAULT_IDENTITY,
  serveCloudMetadata,
} from '../../hardware-sim/cloud/service.js'
import { AzureApi, type AzureApiConfig } from '../../src/attestors/cloud/azure/arm.js'
import { azureApis, parseAzureServerConfig } from '../../src/attestors/cloud/azure/server.js'
import { CloudAttestationError } from '../../src/attestors/cloud/common.js'
import { readSecretFile } from '../../src/attestors/cloud/secret.js'

const I = DEFAULT_IDENTITY
const refused = (reason: string, re: RegExp) => (e: unknown) =>
  e instanceof CloudAttestationError &&
  e.reason === reason &&
  (reason === 'api' ? e.code === 'ERR_CLOUD_API' : e.code === 'ERR_ATTESTATION_FAILED') &&
  re.test(e.message)

async function simRig(
  t: { after: (f: () => Promise<void> | void) => void },
  identity: CloudIdentity = {},
) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-azure-api-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = await ensureCloudKeys(dir, 'azure')
  const { server, port } = await serveCloudMetadata('azure', keys, identity, 0)
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

test('azure_msi client secret from app_secret_file (0600, owned, one line) or app_secret_env; app_secret in the config warns; wrong modes, owners, links and half settings refuse', async (t) => {
  const { dir } = await simRig(t)
  const id = { app_id: I.azureApi.clientId }
  const secretOf = (extra: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => {
    const cfg = parseAzureServerConfig(tenantWith({ ...id, ...extra }), dir, env)
    const c = azureApis(cfg)[0]?.credential
    return { secret: c?.kind === 'secret' ? c.appSecret : undefined, warnings: cfg.warnings }
  }
  const file = join(dir, 'app-secret')
  writeFileSync(file, `${I.azureApi.clientSecret}\n`, { mode: 0o600 })
  assert.deepEqual(secretOf({ app_secret_file: 'app-secret' }), {
    secret: I.azureApi.clientSecret,
    warnings: [],
  })
  assert.deepEqual(secretOf({ app_secret_env: 'AZ_SECRET' }, { AZ_SECRET: 's3cret' }), {
    secret: 's3cret',
    warnings: [],
  })
  // SPIRE's app_secret still works, with a warning that never quotes the secret.
  const inline = secretOf({ app_secret: I.azureApi.clientSecret })
  assert.equal(inline.secret, I.azureApi.clientSecret)
  assert.equal(inline.warnings.length, 1)
  assert.match(
    inline.warnings[0]!,
    /app_secret: the client secret is in the config file.*app_secret_file/,
  )
  assert.ok(!inline.warnings[0]!.includes(I.azureApi.clientSecret))
  const bad = (extra: Record<string, unknown>, re: RegExp, env: NodeJS.ProcessEnv = {}) =>
    assert.throws(
      () => parseAzureServerConfig(tenantWith({ ...id, ...extra }), dir, env),
      (e: Error) => re.test(e.message) && !e.message.includes(I.azureApi.clientSecret),
    )
  bad(
    { app_secret_file: 'app-secret', app_secret_env: 'AZ_SECRET' },
    /app_secret, app_secret_file, app_secret_env: set one/,
    { AZ_SECRET: 'x' },
  )
  bad(
    { app_secret_env: 'AZ_SECRET' },
    /app_secret_env: the environment variable AZ_SECRET is not set/,
  )
  bad({ app_secret_file: 'missing' }, /app_secret_file: cannot read .*ENOENT/)
  chmodSync(file, 0o640)
  bad({ app_secret_file: 'app-secret' }, /app_secret_file: .* has mode 0640; make it 0600/)
  chmodSync(file, 0o600)
  symlinkSync(file, join(dir, 'link'))
  bad({ app_secret_file: 'link' }, /app_secret_file: .* is not a regular file/)
  writeFileSync(join(dir, 'two-lines'), 'a\nb\n', { mode: 0o600 })
  bad({ app_secret_file: 'two-lines' }, /the secret must be one non-empty line/)
  bad(
    { app_secret_file: 'app-secret', use_msi: true },
    /use_msi: set it or app_id\/app_secret, not both/,
  )
  // Someone else's file (root may own it: root can read it anyway).
  const me = process.geteuid?.() ?? 0
  if (me === 0) {
    chownSync(file, 4242, 4242)
    assert.match(
      JSON.stringify(readSecretFile('app_secret_file', file)),
      /owned by uid 4242, not by this process's uid 0 or root/,
    )
  } else {
    assert.match(JSON.stringify(readSecretFile('app_secret_file', file, me + 1)), /owned by uid/)
  }
})

test('AzureApi.findVm: a nextLink to another origin is refused before the bearer token follows it; endless pages stop at the cap', async (t) => {
  const { dir, url } = await simRig(t)
  const cfg = azureApis(
    parseAzureServerConfig({ ...tenantWith(secret), authority_url: url }, dir),
  )[0] as AzureApiConfig
  let calls = 0
  let next = (_host: string) => 'http://127.0.0.2:9/elsewhere'
  const rm = createServer((req, res) => {
    calls++
    res.writeHead(200, { 'Content-Type': 'application/json' })
    res.end(JSON.stringify({ value: [], nextLink: next(String(req.headers.host)) }))
  })
  await new Promise<void>((r) => rm.listen(0, '127.0.0.1', r))
  t.after(() => new Promise<void>((r) => rm.close(() => r())))
  const api = new AzureApi({
    ...cfg,
    resourceManager: `http://127.0.0.1:${(rm.address() as { port: number }).port}`,
  })
  const uai = `/subscriptions/${I.subscriptionId}/resourcegroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/edge`
  await assert.rejects(
    api.findVm(uai, I.principalId, Date.now()),
    refused('api', /nextLink leaves/),
  )
  assert.equal(calls, 1)
  next = (host) => `http://${host}/subscriptions/${I.subscriptionId}/resources?page=more`
  calls = 0
  await assert.rejects(
    api.findVm(uai, I.principalId, Date.now()),
    refused('api', /more than 20 pages/),
  )
  assert.equal(calls, 20)
  await assert.rejects(
    api.findVm(uai.replace('userAssignedIdentities', 'virtualMachines'), I.principalId, Date.now()),
    refused('claims', /not a user-assigned identity/),
  )
})

test('AzureApi: a refused token under concurrent lookups is exchanged once, not once per late 401 (each drop forgot the fresh token)', async (t) => {
  let exchanges = 0
  const aad = createServer((_req, res) => {
    exchanges++
    res.writeHead(200, { 'Content-Type': 'application/json' })
    res.end(JSON.stringify({ access_token: `t${exchanges}`, expires_in: 3600 }))
  })
  let revoked = false
  let late = 0
  const rm = createServer((req, res) => {
    const refuse = revoked && req.headers.authorization === 'Bearer t1'
    // Lookups that left with the old token hear of its refusal one after another.
    setTimeout(
      () => {
        res.writeHead(refuse ? 401 : 200, { 'Content-Type': 'application/json' })
        res.end(refuse ? '{"error":{"code":"InvalidAuthenticationToken"}}' : '{}')
      },
      refuse ? 20 * late++ : 0,
    )
  })
  for (const s of [aad, rm]) {
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
    t.after(() => new Promise<void>((r) => s.close(() => r())))
  }
  const at = (s: Server) => `http://127.0.0.1:${(s.address() as { port: number }).port}`
  const api = new AzureApi({
    tenant: I.tenantId,
    credential: { kind: 'secret', appId: I.azureApi.clientId, appSecret: 'x' },
    authority: at(aad),
    resourceManager: at(rm),
    msiEndpoint: 'http://127.0.0.1:9',
    timeoutMs: 5000,
  })
  const now = Date.now()
  await api.fetchJson('prime', `${at(rm)}/x`, now)
  assert.equal(exchanges, 1)
  revoked = true
  await Promise.all(Array.from({ length: 8 }, () => api.fetchJson('lookup', `${at(rm)}/x`, now)))
  assert.equal(exchanges, 2, 'one exchange for the refused token')
})

test("AzureApi: a Resource Manager name holding ':' is refused as malformed, not joined into a selector that reads as another group's", async (t) => {
  for (const identity of [
    { networkSecurityGroup: 'frontend:nsg' },
    { networkResourceGroup: 'network:edge' },
    { subnet: 'gate:ways' },
  ] satisfies CloudIdentity[]) {
    const { dir, url } = await simRig(t, identity)
    const cfg = azureApis(
      parseAzureServerConfig(
        { ...tenantWith(secret), authority_url: url, resource_manager_endpoint: url },
        dir,
      ),
    )[0] as AzureApiConfig
    const vm = `/subscriptions/${I.subscriptionId}/resourcegroups/${I.resourceGroup}/providers/Microsoft.Compute/virtualMachines/${I.vmName}`
    await assert.rejects(
      new AzureApi(cfg).selectors(vm, I.principalId, Date.now()),
      refused('api', /is malformed/),
      JSON.stringify(identity),
    )
  }
})
