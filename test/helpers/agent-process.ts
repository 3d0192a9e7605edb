import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { validateX509Svid } from '../../src/spiffe/x509-svid.js'
import { type CliProcess, startCli } from './cli-process.js'
import { cli } from './exec.js'

type After = { after: (fn: () => Promise<void>) => void }

/** A temp dir the unprivileged workload and the agent can both reach. */
export function processDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  chmodSync(dir, 0o755)
  return dir
}

export interface ServerProcess extends CliProcess {
  readonly adminSocket: string
  readonly address: string
  readonly config: string
  /** Runs `server <args…> --admin-socket <sock>` and returns stdout; throws on failure. */
  admin(...args: string[]): Promise<string>
}

/** `spiffe-edge server run` as an operator starts it, from a config written into `dir`. */
export async function startServerProcess(
  dir: string,
  t: After,
  serverToml = '',
  port = 0,
  env?: NodeJS.ProcessEnv,
): Promise<ServerProcess> {
  const config = join(dir, 'server.conf')
  // Written on every start; a restart over the same dir keeps the data.
  writeFileSync(
    config,
    // Tests start several agents from 127.0.0.1 within a second; SPIRE's default of 1/s per
    // address is not what they test (server-attest-bounds and server-node-api test it directly).
    `[server]\ntrust_domain = "example.org"\ndata_dir = "./server"\nlog_level = "info"\n${/^admin_socket\s*=/m.test(serverToml) ? '' : 'admin_socket = "./server/admin.sock"\n'}${/attest_rate_per_second/.test(serverToml) ? '' : 'attest_rate_per_second = 100\n'}${serverToml}\n` +
      '[plugins.KeyManager.disk]\n[plugins.NodeAttestor.join_token]\n',
  )
  const p = await startCli(
    ['server', 'run', '--config', config, '--port', String(port)],
    t,
    env ? { env } : {},
  )
  const adminSocket = String(p.first.admin_socket)
  return {
    ...p,
    adminSocket,
    address: String(p.first.listening),
    config,
    async admin(...args: string[]) {
      const r = await cli(['server', ...args, '--admin-socket', adminSocket])
      if (r.code !== 0) throw new Error(`server ${args.join(' ')}: ${r.stderr}`)
      return r.stdout
    },
  }
}

/**
 * The usual arrangement: a join token that gives its agent the alias spiffe://example.org/host,
 * and an entry under that alias issuing `workloadId` to this process's uid. Returns the token.
 */
export async function hostTokenFor(server: ServerProcess, workloadId: string): Promise<string> {
  const token = JSON.parse(
    await server.admin('token', 'generate', '--spiffeID', 'spiffe://example.org/host', '--json'),
  ).value as string
  await server.admin(
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    workloadId,
    '--selector',
    `unix:uid:${process.getuid!()}`,
  )
  return token
}

/** Writes an agent config into `dir` (paths inside it); returns its path. */
export function writeAgentConfig(dir: string, address: string, agentToml = ''): string {
  const config = join(dir, 'agent.conf')
  writeFileSync(
    config,
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${address}"\ndata_dir = "./agent"\n` +
      `socket_path = "./agent/public/api.sock"\nlog_level = "info"\n${agentToml}\n` +
      '[plugins.NodeAttestor.join_token]\n[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n',
  )
  return config
}

export function agentArgs(config: string, ...more: string[]): string[] {
  return ['agent', 'run', '--config', config, ...more]
}

/**
 * Fetches X509-SVIDs from the Workload API the way a workload does and checks each against the
 * bundle it came with, now. Returns the SPIFFE IDs, or throws saying what was wrong.
 */
export async function fetchValidSvids(socketPath: string): Promise<string[]> {
  const td = TrustDomain.parse('example.org')
  const c = workloadClient(`unix://${socketPath}`, { ownConnection: true, timeoutMs: 5000 })
  try {
    const r = await c.fetchX509()
    if (r.svids.length === 0) throw new Error('no SVIDs')
    const now = new Date()
    return r.svids.map((s) => {
      const bundle = new TrustBundle({ trustDomain: td, x509Authorities: s.bundle }).x509Bundle()
      const v = validateX509Svid(s.chain, (d) => (d.equals(td) ? bundle : undefined), now)
      return v.spiffeId.toString()
    })
  } finally {
    c.close()
  }
}
