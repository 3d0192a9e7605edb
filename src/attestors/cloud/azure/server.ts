/**
 * The azure_msi server half: reads the tenant from the (not yet trusted) token only to pick that
 * tenant's keys and rules, then verifies the token (RS256 against the tenant's OpenID keys, issuer
 * https://sts.windows.net/<tenant>/, audience = the tenant's resource_id, times), the tenant
 * allowlist, and first use. Agent ID as SPIRE's: spiffe://<td>/spire/agent/azure_msi/<tenant>/<principal>.
 */
import { resolve } from 'node:path'
import { decodeJwt } from 'jose'
import type { Table } from '../../../common/config.js'
import type { Selector, ServerNodeAttestor } from '../../types.js'
import { DEFAULT_API_TIMEOUT_MS, insecureUrlProblem } from '../api.js'
import {
  type AttestedLookup,
  CloudAttestationError,
  checkFirstUse,
  idSegment,
  PluginConfig,
} from '../common.js'
import { type KeyResolver, keyResolver, MAX_TOKEN, verifyJwt } from '../jwt.js'
import { readSecretEnv, readSecretFile } from '../secret.js'
import {
  AzureApi,
  type AzureApiConfig,
  type AzureCredential,
  DEFAULT_AUTHORITY,
  DEFAULT_MSI_ENDPOINT,
  DEFAULT_RESOURCE_MANAGER,
  UAI_ID,
} from './arm.js'
import {
  AZURE_MSI,
  DEFAULT_RESOURCE,
  parseAzurePayload,
  tenantIssuer,
  tenantJwksUrl,
} from './protocol.js'

interface TenantRule {
  readonly resourceId: string
  readonly keys: KeyResolver
  /** Resource Manager lookups (app_id/app_secret or use_msi): the network selectors. */
  readonly api?: AzureApiConfig
}

export interface AzureServerConfig {
  readonly tenants: ReadonlyMap<string, TenantRule>
  readonly tofu: boolean
  /** Accepted but unwise settings (app_secret in the config), for the start-up log. */
  readonly warnings: readonly string[]
}

const TENANT = /^[0-9a-fA-F-]{36}$/
const SOURCE = `plugins.NodeAttestor.${AZURE_MSI}`

export function parseAzureServerConfig(
  raw: Table,
  baseDir: string,
  env: NodeJS.ProcessEnv = process.env,
): AzureServerConfig {
  const warnings: string[] = []
  const c = new PluginConfig(SOURCE, raw, [
    'tenants',
    'tofu',
    'authority_url',
    'resource_manager_endpoint',
    'msi_endpoint',
    'api_timeout_ms',
  ])
  const endpoints = {
    authority: c.url('authority_url') ?? DEFAULT_AUTHORITY,
    resourceManager: c.url('resource_manager_endpoint') ?? DEFAULT_RESOURCE_MANAGER,
    msiEndpoint: c.url('msi_endpoint') ?? DEFAULT_MSI_ENDPOINT,
    timeoutMs: c.int('api_timeout_ms', DEFAULT_API_TIMEOUT_MS, 120_000) || DEFAULT_API_TIMEOUT_MS,
  }
  for (const [k, v, md] of [
    ['authority_url', endpoints.authority, false],
    ['resource_manager_endpoint', endpoints.resourceManager, false],
    ['msi_endpoint', endpoints.msiEndpoint, true],
  ] as const) {
    const bad = insecureUrlProblem(k, v, md)
    if (bad) c.problems.push(bad)
  }
  const tenants = new Map<string, TenantRule>()
  const t = c.table('tenants')
  if (!t || Object.keys(t).length === 0)
    c.problems.push('tenants: required, one table per tenant ID')
  for (const [tenant, v] of Object.entries(t ?? {})) {
    if (!TENANT.test(tenant)) {
      c.problems.push(`tenants.${tenant}: not a tenant ID (a GUID)`)
      continue
    }
    const tc = new PluginConfig(`${SOURCE}.tenants.${tenant}`, (v ?? {}) as Table, [
      'resource_id',
      'jwks_file',
      'jwks_url',
      'subscription_id',
      'app_id',
      'app_secret',
      'app_secret_file',
      'app_secret_env',
      'use_msi',
    ])
    const credential = tenantCredential(tc, baseDir, env)
    if (tc.has('app_secret'))
      warnings.push(
        `${SOURCE}.tenants.${tenant}.app_secret: the client secret is in the config file (configs get copied and logged); prefer app_secret_file (mode 0600) or app_secret_env`,
      )
    const subscriptionId = tc.string('subscription_id')
    if (subscriptionId !== undefined && !TENANT.test(subscriptionId))
      tc.problems.push('subscription_id: not a subscription ID (a GUID)')
    if (subscriptionId !== undefined && !credential)
      tc.problems.push('subscription_id: needs app_id/app_secret or use_msi')
    const api: AzureApiConfig | undefined = credential
      ? {
          tenant: tenant.toLowerCase(),
          credential,
          ...(subscriptionId ? { subscriptionId } : {}),
          ...endpoints,
        }
      : undefined
    const file = tc.string('jwks_file')
    const url = tc.url('jwks_url')
    if (file && url) tc.problems.push('jwks_file and jwks_url: set one')
    try {
      const keys = keyResolver(
        file ? { file: resolve(baseDir, file) } : { url: url ?? tenantJwksUrl(tenant) },
      )
      tenants.set(tenant.toLowerCase(), {
        resourceId: tc.string('resource_id') ?? DEFAULT_RESOURCE,
        keys,
        ...(api ? { api } : {}),
      })
    } catch (err) {
      tc.problems.push(`jwks_file: ${(err as Error).message}`)
    }
    c.problems.push(...tc.problems.map((p) => `tenants.${tenant}.${p}`))
  }
  const tofu = c.bool('tofu', true)
  c.done()
  return { tenants, tofu, warnings }
}

/**
 * SPIRE's per-tenant credentials: an app registration's client secret (app_secret as SPIRE, or
 * app_secret_file / app_secret_env, kept out of the config), or the server's MSI.
 */
function tenantCredential(
  tc: PluginConfig,
  baseDir: string,
  env: NodeJS.ProcessEnv,
): AzureCredential | undefined {
  const appId = tc.string('app_id')
  const inline = tc.string('app_secret')
  const file = tc.string('app_secret_file')
  const envName = tc.string('app_secret_env')
  const sources = [inline, file, envName].filter((v) => v !== undefined).length
  const msi = tc.bool('use_msi', false)
  if (msi && (appId || sources > 0))
    tc.problems.push('use_msi: set it or app_id/app_secret, not both')
  if (sources > 1) tc.problems.push('app_secret, app_secret_file, app_secret_env: set one')
  if ((appId === undefined) !== (sources === 0))
    tc.problems.push(
      'app_id and app_secret: set both (the secret as app_secret, app_secret_file or app_secret_env)',
    )
  if (appId && !TENANT.test(appId)) tc.problems.push('app_id: not an application (client) ID')
  if (appId && sources === 1 && tc.problems.length === 0) {
    const got =
      inline !== undefined
        ? { secret: inline }
        : file !== undefined
          ? readSecretFile('app_secret_file', resolve(baseDir, file))
          : readSecretEnv('app_secret_env', envName!, env)
    if ('problem' in got) tc.problems.push(got.problem)
    else return { kind: 'secret', appId, appSecret: got.secret }
  }
  return msi ? { kind: 'msi' } : undefined
}

/** The tenants whose Resource Manager lookups are on, for the start-up line. */
export function azureApis(cfg: AzureServerConfig): AzureApiConfig[] {
  return [...cfg.tenants.values()].flatMap((t) => (t.api ? [t.api] : []))
}

/** /subscriptions/<s>/resourcegroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>
 * (the token's lower-case resourcegroups, or ARM's resourceGroups from the VM list). */
const MIRID =
  /^\/subscriptions\/([0-9a-fA-F-]{36})\/resourcegroups\/([^/:]{1,90})\/providers\/Microsoft\.Compute\/virtualMachines\/([^/:]{1,64})$/i

export function azureServerAttestor(
  cfg: AzureServerConfig,
  attested: AttestedLookup,
): ServerNodeAttestor {
  const apis = new Map<string, AzureApi>()
  for (const [tenant, rule] of cfg.tenants) if (rule.api) apis.set(tenant, new AzureApi(rule.api))
  return {
    kind: 'NodeAttestor',
    name: AZURE_MSI,
    async attest(payload, _challenge, ctx) {
      const { token } = parseAzurePayload(payload)
      if (typeof token !== 'string' || token.length > MAX_TOKEN) {
        throw new CloudAttestationError(
          AZURE_MSI,
          'payload',
          `the token must be a string of at most ${MAX_TOKEN} bytes`,
        )
      }
      let unverifiedTenant: unknown
      try {
        unverifiedTenant = decodeJwt(token).tid
      } catch (err) {
        throw new CloudAttestationError(AZURE_MSI, 'payload', 'the token is not a JWT', err)
      }
      const tenant = idSegment(AZURE_MSI, 'tid', unverifiedTenant).toLowerCase()
      const rule = cfg.tenants.get(tenant)
      if (!rule)
        throw new CloudAttestationError(AZURE_MSI, 'tenant', `tenant ${tenant} is not configured`)
      const claims = await verifyJwt(AZURE_MSI, token, rule.keys, {
        issuer: tenantIssuer(tenant),
        audience: rule.resourceId,
        now: ctx.now,
      })
      const principal = idSegment(AZURE_MSI, 'sub', claims.sub)
      const mirid = typeof claims.xms_mirid === 'string' ? claims.xms_mirid : ''
      // vm-name:<rg>:<name> joins with ':' (as SPIRE does); no Azure name holds one (see arm.ts).
      if (mirid.includes(':'))
        throw new CloudAttestationError(
          AZURE_MSI,
          'claims',
          "xms_mirid holds ':', which no Azure resource name does: its selectors would be ambiguous",
        )
      const agentPath = `/spire/agent/${AZURE_MSI}/${tenant}/${principal}`
      await checkFirstUse(AZURE_MSI, attested, ctx.trustDomain, agentPath, cfg.tofu)
      const selectors: Selector[] = []
      const uai = UAI_ID.test(mirid) ? mirid : undefined
      const api = apis.get(tenant)
      // A system-assigned identity's token names its VM: SPIRE reads the same facts from
      // Resource Manager; we take them from the token and need no credentials. A user-assigned
      // one names only the identity: its VM comes from Resource Manager, after the token, tenant
      // and first-use checks, so a refused token costs no API call.
      let vmId: string | undefined = MIRID.test(mirid) ? mirid : undefined
      if (api && !vmId) {
        if (!uai)
          throw new CloudAttestationError(
            AZURE_MSI,
            'claims',
            'the token names neither a VM nor a user-assigned identity (xms_mirid): Resource Manager selectors need one',
          )
        vmId = await api.findVm(uai, principal, ctx.now.getTime())
      }
      const m = vmId ? MIRID.exec(vmId) : null
      if (m) {
        selectors.push({ type: AZURE_MSI, value: `subscription-id:${m[1]!.toLowerCase()}` })
        selectors.push({ type: AZURE_MSI, value: `vm-name:${m[2]}:${m[3]}` })
      }
      if (api && vmId) {
        const seen = new Set(selectors.map((s) => s.value))
        for (const s of await api.selectors(vmId, principal, ctx.now.getTime(), uai))
          if (!seen.has(s.value)) {
            seen.add(s.value)
            selectors.push(s)
          }
      }
      return { agentPath, selectors, canReattest: false }
    },
  }
}
