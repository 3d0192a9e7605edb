/**
 * Two trust domains on one host for the federation tests: a real `server run` and `agent run`
 * per domain, each server with a bundle endpoint and a federates_with for the other.
 */
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { type CliProcess, startCli } from './cli-process.js'
import { cli } from './exec.js'

type After = { after: (fn: () => Promise<void>) => void }

/** A port free now (the OS picks it; closed again before the server binds it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0))
    })
  })
}

export interface Domain {
  readonly td: string
  readonly dir: string
  readonly endpointPort: number
  server?: CliProcess & { adminSocket: string; address: string }
  agent?: CliProcess & { socket: string }
}

/** Runs `spiffe-edge server <args> --admin-socket …`; returns stdout, throws with stderr. */
export async function admin(d: Domain, ...args: string[]): Promise<string> {
  const r = await cli(['server', ...args, '--admin-socket', d.server!.adminSocket])
  if (r.code !== 0) throw new Error(`server ${args.join(' ')} (${d.td}): ${r.stderr}`)
  return r.stdout
}

export async function startDomainServer(
  d: Domain,
  federationToml: string,
  t: After,
  env?: NodeJS.ProcessEnv,
) {
  const config = join(d.dir, 'server.conf')
  writeFileSync(
    config,
    `[server]\ntrust_domain = "${d.td}"\ndata_dir = "./server"\nadmin_socket = "./server/admin.sock"\nlog_level = "debug"\n` +
      `${federationToml}\n[plugins.KeyManager.disk]\n[plugins.NodeAttestor.join_token]\n`,
  )
  const p = await startCli(
    ['server', 'run', '--config', config, '--port', '0'],
    t,
    env ? { env: { ...process.env, ...env } } : {},
  )
  d.server = { ...p, adminSocket: String(p.first.admin_socket), address: String(p.first.listening) }
  return d.server
}

export async function startDomainAgent(d: Domain, token: string, t: After) {
  const config = join(d.dir, 'agent.conf')
  writeFileSync(
    config,
    `[agent]\ntrust_domain = "${d.td}"\nserver_address = "${d.server!.address}"\n` +
      'data_dir = "./agent"\nsocket_path = "./agent/public/api.sock"\nsync_interval = "1s"\n' +
      'insecure_bootstrap = true\nlog_level = "debug"\n' +
      '[plugins.NodeAttestor.join_token]\n[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n',
  )
  const p = await startCli(['agent', 'run', '--config', config, '--join-token', token], t)
  d.agent = { ...p, socket: String(p.first.socket_path) }
  return d.agent
}

/** Polls `fn` until it returns a value other than undefined, or fails after `ms`. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  ms = 90_000,
): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > end)
      throw new Error(`${what}: not within ${ms} ms${last ? ` (${String(last)})` : ''}`)
    await new Promise((r) => setTimeout(r, 300))
  }
}
