/**
 * The cloud node attestors' agent factories (aws_iid, gcp_iit, azure_msi), spread into the
 * catalog in plugins.ts. Their agent SVID key is in the configured key manager (disk, memory, PKCS#11):
 * the evidence names the instance, not a key.
 */
import { awsAgentAttestor, parseAwsAgentConfig } from '../attestors/cloud/aws/agent.js'
import { AWS_IID } from '../attestors/cloud/aws/protocol.js'
import { azureAgentAttestor, parseAzureAgentConfig } from '../attestors/cloud/azure/agent.js'
import { AZURE_MSI } from '../attestors/cloud/azure/protocol.js'
import { gcpAgentAttestor, parseGcpAgentConfig } from '../attestors/cloud/gcp/agent.js'
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
    (attestor: (data: Table) => AgentNodeAttestor) =>
    async (config: AgentConfig, data: Table): Promise<Identity> => {
      const a = attestor(data)
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
    [AWS_IID, make((d) => awsAgentAttestor(parseAwsAgentConfig(d)))],
    [GCP_IIT, make((d) => gcpAgentAttestor(parseGcpAgentConfig(d)))],
    [AZURE_MSI, make((d) => azureAgentAttestor(parseAzureAgentConfig(d)))],
  ]
}
