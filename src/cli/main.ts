import { packageVersion } from '../common/package-root.js'
import { agentRunCommand } from './agent-run.js'
import { agentHealthcheck, apiGroup } from './api.js'
import { type Group, type Io, runCli } from './command.js'
import { configGroup, validateCommand } from './config-cmds.js'
import { keysGroup } from './keys.js'
import { oidcGroup } from './oidc.js'
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
    serverGroup(serverRunCommand, validateCommand('server')),
    {
      kind: 'group',
      name: 'agent',
      summary: 'the node agent: attests, keeps SVIDs fresh, serves the Workload API',
      children: [agentRunCommand, agentHealthcheck, validateCommand('agent')],
    },
    apiGroup,
    oidcGroup,
    keysGroup,
    tpmGroup,
    simGroup,
    configGroup,
  ],
}

/**
 * A reader that stops early (`| head`, `| grep -q`) closes the pipe: the next write fails with
 * EPIPE, emitted on the stream. That is the reader being done, not a failure of ours: exit
 * quietly with 0 instead of dying on an unhandled 'error' with a stack trace.
 */
function exitQuietlyOnEpipe(stream: NodeJS.WriteStream, code: number): void {
  if (stream.listenerCount('error') > 0) return
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(code)
    throw err
  })
}

export async function main(argv: readonly string[], io?: Partial<Io>): Promise<number> {
  if (!io?.out) exitQuietlyOnEpipe(process.stdout, 0)
  // Nothing can be reported once stderr's reader is gone; keep the exit code we would have had.
  if (!io?.err) exitQuietlyOnEpipe(process.stderr, 1)
  return runCli(
    cliTree,
    argv,
    {
      out: io?.out ?? ((t) => process.stdout.write(t)),
      err: io?.err ?? ((t) => process.stderr.write(t)),
      env: io?.env ?? process.env,
    },
    packageVersion(),
  )
}
