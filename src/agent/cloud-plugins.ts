/**
 * The cloud node attestors' agent factories (aws_iid, gcp_iit, azure_msi), spread into the
 * catalog in plugins.ts. Their agent SVID key is a software key (disk or memory, as configured):
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
import type { KeyManager } from '../keymanager/types.js'
import type { AgentConfig } from './config.js'

type Identity = { attestor: AgentNodeAttestor; keyManager: KeyManager; close(): Promise<void> }

export function cloudNodeAttestors(
  softwareKeys: (config: AgentConfig) => KeyManager,
): [string, (config: AgentConfig, data: Table) => Promise<Identity>][] {
  const make =
    (attestor: (data: Table) => AgentNodeAttestor) => async (config: AgentConfig, data: Table) => ({
      attestor: attestor(data),
      keyManager: softwareKeys(config),
      close: async () => undefined,
    })
  return [
    [AWS_IID, make((d) => awsAgentAttestor(parseAwsAgentConfig(d)))],
    [GCP_IIT, make((d) => gcpAgentAttestor(parseGcpAgentConfig(d)))],
    [AZURE_MSI, make((d) => azureAgentAttestor(parseAzureAgentConfig(d)))],
  ]
}
