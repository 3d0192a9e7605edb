/** The gcp_iit agent half: asks the metadata server for an identity token for the audience. */
import type { Table } from '../../../common/config.js'
import { SpiffeEdgeError } from '../../../errors.js'
import type { AgentNodeAttestor } from '../../types.js'
import { DEFAULT_TIMEOUT_MS, metadataCall, noChallenge, PluginConfig } from '../common.js'
import { DEFAULT_AUDIENCE, DEFAULT_METADATA_URL, encodeGcpPayload, GCP_IIT } from './protocol.js'

export interface GcpAgentConfig {
  readonly metadataUrl: string
  readonly audience: string
  readonly serviceAccount: string
  readonly timeoutMs: number
}

export function parseGcpAgentConfig(raw: Table): GcpAgentConfig {
  const c = new PluginConfig(`plugins.NodeAttestor.${GCP_IIT}`, raw, [
    'metadata_url',
    'audience',
    'service_account',
    'timeout_ms',
  ])
  const cfg = {
    metadataUrl: c.url('metadata_url') ?? DEFAULT_METADATA_URL,
    audience: c.string('audience') ?? DEFAULT_AUDIENCE,
    serviceAccount: c.string('service_account') ?? 'default',
    timeoutMs: c.int('timeout_ms', DEFAULT_TIMEOUT_MS, 60_000) || DEFAULT_TIMEOUT_MS,
  }
  c.done()
  return cfg
}

export function gcpAgentAttestor(cfg: GcpAgentConfig): AgentNodeAttestor {
  return {
    kind: 'NodeAttestor',
    name: GCP_IIT,
    async payload() {
      const q = new URLSearchParams({ audience: cfg.audience, format: 'full' })
      const url = `${cfg.metadataUrl}/computeMetadata/v1/instance/service-accounts/${encodeURIComponent(cfg.serviceAccount)}/identity?${q}`
      const res = await metadataCall('fetching the GCP instance identity token', {
        url,
        headers: { 'Metadata-Flavor': 'Google' },
        timeoutMs: cfg.timeoutMs,
      })
      // Google's clients check the answer's flavor too: anything else is not the metadata server.
      if (res.headers.get('metadata-flavor') !== 'Google') {
        throw new SpiffeEdgeError(
          'ERR_CLOUD_METADATA',
          `fetching the GCP instance identity token: ${cfg.metadataUrl} is not a GCP metadata server (no Metadata-Flavor: Google in its answer)`,
          { remedy: 'check metadata_url' },
        )
      }
      return encodeGcpPayload(res.body.trim())
    },
    respond: noChallenge(GCP_IIT),
  }
}
