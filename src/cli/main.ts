import { agentRunCommand } from './agent-run.js'
import { agentHealthcheck, apiGroup } from './api.js'
import { type Group, type Io, runCli } from './command.js'
import { serverGroup } from './server.js'
import { serverRunCommand } from './server-run.js'
import { simGroup } from './sim.js'
import { tpmGroup } from './tpm.js'

export const cliTree: Group = {
  kind: 'group',
  name: 'spiffe-edge',
  summary:
    'spiffe-edge: a hardware-attested SPIFFE agent and server for edge fleets.\n' +
    'Server (node API, admin), agent (Workload API), TPM diagnostics and hardware-sim.',
  children: [
    serverGroup(serverRunCommand),
    {
      kind: 'group',
      name: 'agent',
      summary: 'the node agent: attests, keeps SVIDs fresh, serves the Workload API',
      children: [agentRunCommand, agentHealthcheck],
    },
    apiGroup,
    tpmGroup,
    simGroup,
  ],
}

export async function main(argv: readonly string[], io?: Partial<Io>): Promise<number> {
  return runCli(cliTree, argv, {
    out: io?.out ?? ((t) => process.stdout.write(t)),
    err: io?.err ?? ((t) => process.stderr.write(t)),
    env: io?.env ?? process.env,
  })
}
