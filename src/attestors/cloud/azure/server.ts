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
import {
  type AttestedLookup,
  CloudAttestationError,
  checkFirstUse,
  idSegment,
  PluginConfig,
} from '../common.js'
import { type KeyResolver, keyResolver, MAX_TOKEN, verifyJwt } from '../jwt.js'
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
}

export interface AzureServerConfig {
  readonly tenants: ReadonlyMap<string, TenantRule>
  readonly tofu: boolean
}

const TENANT = /^[0-9a-fA-F-]{36}$/
const SOURCE = `plugins.NodeAttestor.${AZURE_MSI}`

export function parseAzureServerConfig(raw: Table, baseDir: string): AzureServerConfig {
  const c = new PluginConfig(SOURCE, raw, ['tenants', 'tofu'])
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
    ])
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
      })
    } catch (err) {
      tc.problems.push(`jwks_file: ${(err as Error).message}`)
    }
    c.problems.push(...tc.problems.map((p) => `tenants.${tenant}.${p}`))
  }
  const tofu = c.bool('tofu', true)
  c.done()
  return { tenants, tofu }
}

/** /subscriptions/<s>/resourcegroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name> */
const MIRID =
  /^\/subscriptions\/([0-9a-fA-F-]{36})\/resourcegroups\/([^/]{1,90})\/providers\/Microsoft\.Compute\/virtualMachines\/([^/]{1,64})$/i

export function azureServerAttestor(
  cfg: AzureServerConfig,
  attested: AttestedLookup,
): ServerNodeAttestor {
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
      const agentPath = `/spire/agent/${AZURE_MSI}/${tenant}/${principal}`
      await checkFirstUse(AZURE_MSI, attested, ctx.trustDomain, agentPath, cfg.tofu)
      const selectors: Selector[] = []
      // The VM's resource ID is in the signed token (system-assigned identities): SPIRE reads the
      // same facts from Resource Manager; we take them from the token and need no credentials.
      const m = typeof claims.xms_mirid === 'string' ? MIRID.exec(claims.xms_mirid) : null
      if (m) {
        selectors.push({ type: AZURE_MSI, value: `subscription-id:${m[1]!.toLowerCase()}` })
        selectors.push({ type: AZURE_MSI, value: `vm-name:${m[2]}:${m[3]}` })
      }
      return { agentPath, selectors, canReattest: false }
    },
  }
}
