/**
 * A real deployment for the library's tests: `spiffe-edge server run` and `spiffe-edge agent run`
 * as processes, a join token, and workload entries by uid.
 */
import { join } from 'node:path'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../../../../test/helpers/agent-process.js'
import { startCli } from '../../../../test/helpers/cli-process.js'

type After = { after: (fn: () => Promise<void>) => void }

export const NOBODY = 65534

export interface Deployment {
  readonly dir: string
  readonly socket: string
  /** Stops the agent (SIGTERM) and starts it again on the same data dir and socket. */
  restartAgent(): Promise<void>
  stopAgent(): Promise<void>
  startAgent(): Promise<void>
}

export async function deploy(
  t: After,
  entries: { id: string; uid: number; ttl?: number }[],
): Promise<Deployment> {
  const dir = processDir('spiffe-lib-agent-')
  const server = await startServerProcess(dir, t)
  const token = JSON.parse(
    await server.admin('token', 'generate', '--spiffeID', 'spiffe://example.org/host', '--json'),
  ).value as string
  for (const e of entries) {
    await server.admin(
      'entry',
      'create',
      '--parentID',
      'spiffe://example.org/host',
      '--spiffeID',
      e.id,
      '--selector',
      `unix:uid:${e.uid}`,
      ...(e.ttl === undefined ? [] : ['--x509SVIDTTL', String(e.ttl)]),
    )
  }
  const config = writeAgentConfig(
    dir,
    server.address,
    'sync_interval = "1s"\ninsecure_bootstrap = true',
  )
  // Outside the agent's data dir (0700), so workloads of other uids can reach it.
  const socket = join(dir, 'public', 'api.sock')
  const args = agentArgs(config, '--socket-path', socket)
  let agent = await startCli([...args, '--join-token', token], t)
  const d: Deployment = {
    dir,
    socket,
    async stopAgent() {
      agent.child.kill('SIGTERM')
      await agent.exited
    },
    async startAgent() {
      agent = await startCli(args, t)
    },
    async restartAgent() {
      await d.stopAgent()
      await d.startAgent()
    },
  }
  return d
}
