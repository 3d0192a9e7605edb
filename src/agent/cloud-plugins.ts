/**
 * The cloud node attestors' agent factories (aws_iid, gcp_iit, azure_msi), spread into the
 * catalog in plugins.ts. Their agent SVID key is in the configured key manager (disk, memory, PKCS#11):
 * the evidence names the instance, not a key.
 */
import { AWS_IID } from '../attestors/cloud/aws/protocol.js'
import { AZURE_MSI } from '../attestors/cloud/azure/protocol.js'
import { GCP_IIT } from '../attestors/cloud/gcp/protocol.js'
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Table } from '../common/config.js'
import type { KeyManagerPlugin } from '../keymanager/catalog.js'
import type { CacheSealer } from '../keymanager/sealer.js'
import type { KeyManager } from '../keymanager/types.js'
import type { AgentConfig } from './config.js'

type Identity = {
  attestor: AgentNodeAttestor
  keyManager: KeyManager
  keysHealthy?: () => boolean
  sealer?: CacheSealer
  close(): Promise<void>
}

/** The configured key manager (disk, memory or a PKCS#11 token), from the catalog in plugins.ts. */
export type AgentKeys = (config: AgentConfig) => Promise<KeyManagerPlugin>

export function cloudNodeAttestors(
  agentKeys: AgentKeys,
): [string, (config: AgentConfig, data: Table) => Promise<Identity>][] {
  const make =
    (attestor: (data: Table) => Promise<AgentNodeAttestor>) =>
    async (config: AgentConfig, data: Table): Promise<Identity> => {
      const a = await attestor(data)
      const keys = await agentKeys(config)
      return {
        attestor: a,
        keyManager: keys.keyManager,
        ...(keys.healthy ? { keysHealthy: keys.healthy } : {}),
        ...(keys.cacheSealer ? { sealer: keys.cacheSealer } : {}),
        close: async () => keys.close(),
      }
    }
  return [
    // Each attestor's modules load when it is configured (the AWS one verifies PKCS#7 with
    // @peculiar's ASN.1 stack): a join-token agent keeps none of them in memory.
    [
      AWS_IID,
      make(async (d) => {
        const m = await import('../attestors/cloud/aws/agent.js')
        return m.awsAgentAttestor(m.parseAwsAgentConfig(d))
      }),
    ],
    [
      GCP_IIT,
      make(async (d) => {
        const m = await import('../attestors/cloud/gcp/agent.js')
        return m.gcpAgentAttestor(m.parseGcpAgentConfig(d))
      }),
    ],
    [
      AZURE_MSI,
      make(async (d) => {
        const m = await import('../attestors/cloud/azure/agent.js')
        return m.azureAgentAttestor(m.parseAzureAgentConfig(d))
      }),
    ],
  ]
}
