/**
 * The cloud node attestors' server factories (aws_iid, gcp_iit, azure_msi), spread into the
 * catalog in plugins.ts. Each gets the datastore's view of "is this agent attested now" for
 * SPIRE's trust-on-first-use rule; an evicted agent is gone from it, so it may attest again.
 */

import { AWS_IID } from '../attestors/cloud/aws/protocol.js'
import {
  awsServerAttestor,
  describeAwsApi,
  parseAwsServerConfig,
} from '../attestors/cloud/aws/server.js'
import { describeAzureApi } from '../attestors/cloud/azure/arm.js'
import { AZURE_MSI } from '../attestors/cloud/azure/protocol.js'
import {
  azureApis,
  azureServerAttestor,
  parseAzureServerConfig,
} from '../attestors/cloud/azure/server.js'
import type { AttestedLookup } from '../attestors/cloud/common.js'
import { GCP_IIT } from '../attestors/cloud/gcp/protocol.js'
import {
  describeGcpApi,
  gcpServerAttestor,
  parseGcpServerConfig,
} from '../attestors/cloud/gcp/server.js'
import type { ServerNodeAttestor } from '../attestors/types.js'
import type { Table } from '../common/config.js'
import type { ServerPluginContext } from './plugins.js'

const attestedIn =
  (ctx: ServerPluginContext): AttestedLookup =>
  async (id) => {
    const node = await ctx.datastore.getAttestedNode(id)
    // A banned node is left to the node API, which refuses it as banned, not as a replay.
    return node !== undefined && !node.banned
  }

const warnIfNoTofu = (ctx: ServerPluginContext, name: string, tofu: boolean) => {
  if (!tofu) {
    ctx.log('warn', `${name}: tofu = false lets a copied document or token attest again`, {
      attestor: name,
    })
  }
}

/** Says at start whether the API-derived selectors are on, so their absence is never a surprise. */
const logApi = (
  ctx: ServerPluginContext,
  name: string,
  selectors: string,
  on: string | undefined,
  off = 'no cloud API credentials configured',
) => {
  if (on === undefined) {
    ctx.log('info', `${name}: ${off}: ${selectors} selectors are off`, {
      attestor: name,
    })
  } else {
    ctx.log(
      'info',
      `${name}: ${selectors} selectors from the cloud API (${on}); attestation is refused when it cannot answer`,
      {
        attestor: name,
      },
    )
  }
}

export const CLOUD_NODE_ATTESTORS: readonly [
  string,
  (data: Table, ctx: ServerPluginContext) => ServerNodeAttestor,
][] = [
  [
    AWS_IID,
    (data, ctx) => {
      const cfg = parseAwsServerConfig(data, ctx.configDir)
      warnIfNoTofu(ctx, AWS_IID, cfg.tofu)
      logApi(
        ctx,
        AWS_IID,
        'tag:, sg:id:, sg:name:, iamrole:',
        cfg.api ? describeAwsApi(cfg.api) : undefined,
      )
      return awsServerAttestor(cfg, attestedIn(ctx))
    },
  ],
  [
    GCP_IIT,
    (data, ctx) => {
      const cfg = parseGcpServerConfig(data, ctx.configDir)
      warnIfNoTofu(ctx, GCP_IIT, cfg.tofu)
      logApi(
        ctx,
        GCP_IIT,
        'tag:, label:, metadata: and instance sa:',
        cfg.api ? describeGcpApi(cfg.api) : undefined,
        'use_instance_metadata is off',
      )
      return gcpServerAttestor(cfg, attestedIn(ctx))
    },
  ],
  [
    AZURE_MSI,
    (data, ctx) => {
      const cfg = parseAzureServerConfig(data, ctx.configDir)
      warnIfNoTofu(ctx, AZURE_MSI, cfg.tofu)
      for (const w of cfg.warnings) ctx.log('warn', w, { attestor: AZURE_MSI })
      const apis = azureApis(cfg)
      logApi(
        ctx,
        AZURE_MSI,
        'network-security-group:, virtual-network:, virtual-network-subnet:',
        apis.length > 0 ? apis.map(describeAzureApi).join('; ') : undefined,
        'no tenant has app_id/app_secret or use_msi',
      )
      return azureServerAttestor(cfg, attestedIn(ctx))
    },
  ],
]
