/**
 * Two trust domains on one host for the federation tests: a real `server run` and `agent run`
 * per domain, each server with a bundle endpoint and a federates_with for the other.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { processDir } from './agent-process.js'
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

/**
 * one.test and two.test, each with a directory under one test root (removed after the test) and a
 * free bundle endpoint port. With FED_DEBUG set, their logs are left in /tmp/<name>-<td>.log.
 */
export async function twoDomains(
  t: After,
  name: string,
): Promise<{ root: string; one: Domain; two: Domain }> {
  const root = processDir(`spiffe-edge-${name}-`)
  t.after(async () => rmSync(root, { recursive: true, force: true }))
  const one: Domain = { td: 'one.test', dir: join(root, 'one'), endpointPort: await freePort() }
  const two: Domain = { td: 'two.test', dir: join(root, 'two'), endpointPort: await freePort() }
  for (const d of [one, two]) mkdirSync(d.dir, { mode: 0o755 })
  t.after(async () => {
    if (process.env.FED_DEBUG)
      for (const d of [one, two])
        writeFileSync(
          `/tmp/${name}-${d.td}.log`,
          `${d.server?.stderr()}${d.agent ? `\n----\n${d.agent.stderr()}` : ''}`,
        )
  })
  return { root, one, two }
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

/**
 * Stops the domain's server (SIGTERM) and starts it again on the same data; returns the ISO time
 * between the two (anything the new process does is later).
 */
export async function restartDomainServer(
  d: Domain,
  federationToml: string,
  t: After,
): Promise<string> {
  d.server!.child.kill('SIGTERM')
  await d.server!.exited
  const stoppedAt = new Date().toISOString()
  await startDomainServer(d, federationToml, t)
  return stoppedAt
}

/** `server federation <verb>` flags for one relationship, as SPIRE spells them, then `extra`. */
export function relationshipArgs(
  verb: string,
  trustDomain: string,
  url: string,
  profile: string,
  ...extra: string[]
): string[] {
  return [
    'federation',
    verb,
    '-trustDomain',
    trustDomain,
    '-bundleEndpointURL',
    url,
    '-bundleEndpointProfile',
    profile,
    ...extra,
  ]
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
