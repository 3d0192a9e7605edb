import { packageVersion } from '../common/package-root.js'
import { type Group, type Io, runCli } from './command.js'
import { AGENT_GROUP, ROOT } from './root.js'

/**
 * `agent run` is the one command whose start time matters (serving cached SVIDs within 1 s of a
 * reboot, the server down): it gets a tree holding only itself, so none of the other commands'
 * modules (server, sim, admin API clients, OIDC) load. The same leaf, so the same options, help
 * and errors; anything else gets the whole tree.
 */
async function treeFor(argv: readonly string[]): Promise<Group> {
  if (argv[0] === 'agent' && argv[1] === 'run') {
    const { agentRunCommand } = await import('./agent-run.js')
    return { ...ROOT, children: [{ ...AGENT_GROUP, children: [agentRunCommand] }] }
  }
  return (await import('./tree.js')).cliTree
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
    await treeFor(argv),
    argv,
    {
      out: io?.out ?? ((t) => process.stdout.write(t)),
      err: io?.err ?? ((t) => process.stderr.write(t)),
      env: io?.env ?? process.env,
    },
    packageVersion(),
  )
}
