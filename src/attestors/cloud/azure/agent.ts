/** The azure_msi agent half: asks IMDS for a managed identity token for the configured resource. */
import type { Table } from '../../../common/config.js'
import { SpiffeEdgeError } from '../../../errors.js'
import type { AgentNodeAttestor } from '../../types.js'
import { DEFAULT_TIMEOUT_MS, metadataCall, noChallenge, PluginConfig } from '../common.js'
import {
  AZURE_MSI,
  DEFAULT_API_VERSION,
  DEFAULT_METADATA_URL,
  DEFAULT_RESOURCE,
  encodeAzurePayload,
} from './protocol.js'

export interface AzureAgentConfig {
  readonly metadataUrl: string
  readonly resourceId: string
  readonly apiVersion: string
  readonly timeoutMs: number
}

export function parseAzureAgentConfig(raw: Table): AzureAgentConfig {
  const c = new PluginConfig(`plugins.NodeAttestor.${AZURE_MSI}`, raw, [
    'metadata_url',
    'resource_id',
    'api_version',
    'timeout_ms',
  ])
  const cfg = {
    metadataUrl: c.url('metadata_url') ?? DEFAULT_METADATA_URL,
    resourceId: c.string('resource_id') ?? DEFAULT_RESOURCE,
    apiVersion: c.string('api_version') ?? DEFAULT_API_VERSION,
    timeoutMs: c.int('timeout_ms', DEFAULT_TIMEOUT_MS, 60_000) || DEFAULT_TIMEOUT_MS,
  }
  c.done()
  return cfg
}

export function azureAgentAttestor(cfg: AzureAgentConfig): AgentNodeAttestor {
  return {
    kind: 'NodeAttestor',
    name: AZURE_MSI,
    async payload() {
      const q = new URLSearchParams({ 'api-version': cfg.apiVersion, resource: cfg.resourceId })
      const what = 'fetching the Azure managed identity token'
      const res = await metadataCall(what, {
        url: `${cfg.metadataUrl}/metadata/identity/oauth2/token?${q}`,
        headers: { Metadata: 'true' },
        timeoutMs: cfg.timeoutMs,
      })
      let token: unknown
      try {
        token = (JSON.parse(res.body) as { access_token?: unknown }).access_token
      } catch {
        token = undefined
      }
      if (typeof token !== 'string' || token === '') {
        throw new SpiffeEdgeError('ERR_CLOUD_METADATA', `${what}: the answer has no access_token`, {
          remedy: 'enable a managed identity on the VM, or check metadata_url',
        })
      }
      return encodeAzurePayload(token)
    },
    respond: noChallenge(AZURE_MSI),
  }
}
