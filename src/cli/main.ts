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
    'The server (node API, admin), TPM diagnostics and hardware-sim; the agent lands with its issue.',
  children: [serverGroup(serverRunCommand), tpmGroup, simGroup],
}

export async function main(argv: readonly string[], io?: Partial<Io>): Promise<number> {
  return runCli(cliTree, argv, {
    out: io?.out ?? ((t) => process.stdout.write(t)),
    err: io?.err ?? ((t) => process.stderr.write(t)),
    env: io?.env ?? process.env,
  })
}
