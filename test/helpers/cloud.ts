/**
 * End-to-end harness for the cloud node attestors: a simulated metadata service process
 * (hardware-sim/cloud), a real server process trusting its signing material, and real agent
 * processes configured against it, each in a directory of its own.
 */
import assert from 'node:assert/strict'
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  type CloudIdentity,
  type CloudKind,
  type CloudSim,
  startCloudSim,
} from '../../hardware-sim/cloud/index.js'
import {
  fetchValidSvids,
  processDir,
  type ServerProcess,
  startServerProcess,
} from './agent-process.js'
import { type CliProcess, startCli } from './cli-process.js'
import { cli, type ExecResult } from './exec.js'

type T = { after: (fn: () => Promise<void> | void) => void }

/** A test's own directory (removed after it) and a simulated metadata service (stopped after). */
export async function cloudTest(
  t: T,
  kind: CloudKind,
  identity?: CloudIdentity,
): Promise<{ root: string; sim: CloudSim }> {
  const root = processDir(`spiffe-edge-e2e-${kind}-`)
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const sim = await startCloudSim({ kind, ...(identity ? { identity } : {}) })
  t.after(() => sim.stop())
  return { root, sim }
}

/** Another simulated instance of the same cloud, signing with the same (trusted) keys. */
export async function siblingSim(
  root: string,
  sim: CloudSim,
  identity: CloudIdentity,
): Promise<CloudSim> {
  const dir = join(root, `sim-${Math.random().toString(36).slice(2, 8)}`)
  mkdirSync(dir)
  copyFileSync(
    join(sim.stateDir, `${sim.kind}-signing-key.pem`),
    join(dir, `${sim.kind}-signing-key.pem`),
  )
  copyFileSync(sim.trust, join(dir, basename(sim.trust)))
  return startCloudSim({ kind: sim.kind, stateDir: dir, identity })
}

export interface CloudRig {
  readonly server: ServerProcess
  readonly bundle: string
  /** Writes an agent config for the attestor into root/<name>/ and returns its path. */
  agentConfig(name: string, attestorToml: string): string
  /** An agent that must attest: resolves once it printed its ready line. */
  startAgent(name: string, attestorToml: string): Promise<CliProcess & { socket: string }>
  /** Starts an agent again on the config and data an earlier startAgent(name) wrote. */
  restartAgent(name: string): Promise<CliProcess>
  /** An agent run expected to fail: its exit code and output. */
  failAgent(name: string, attestorToml: string): Promise<ExecResult>
}

export async function cloudRig(
  root: string,
  t: T,
  kind: string,
  serverAttestorToml: string,
  env?: NodeJS.ProcessEnv,
): Promise<CloudRig> {
  const server = await startServerProcess(
    root,
    t,
    `\n[plugins.NodeAttestor.${kind}]\n${serverAttestorToml}\n`,
    0,
    env,
  )
  const bundle = join(root, 'bundle.pem')
  writeFileSync(bundle, await server.admin('bundle', 'show'))
  const agentConfig = (name: string, attestorToml: string) => {
    const dir = join(root, name)
    mkdirSync(dir, { mode: 0o755 })
    const config = join(dir, 'agent.conf')
    writeFileSync(
      config,
      `[agent]\ntrust_domain = "example.org"\nserver_address = "${server.address}"\ndata_dir = "./data"\n` +
        `socket_path = "./data/public/api.sock"\ntrust_bundle_path = "${bundle}"\nlog_level = "info"\n` +
        `[plugins.NodeAttestor.${kind}]\n${attestorToml}\n[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n`,
    )
    return config
  }
  return {
    server,
    bundle,
    agentConfig,
    async startAgent(name, toml) {
      const config = agentConfig(name, toml)
      const p = await startCli(['agent', 'run', '--config', config], t)
      return { ...p, socket: join(root, name, 'data', 'public', 'api.sock') }
    },
    restartAgent: (name) =>
      startCli(['agent', 'run', '--config', join(root, name, 'agent.conf')], t),
    failAgent: (name, toml) => cli(['agent', 'run', '--config', agentConfig(name, toml)]),
  }
}

/** Another server (own directory root/name, own datastore) with another attestor config. */
export function rigIn(
  root: string,
  name: string,
  t: T,
  kind: string,
  serverAttestorToml: string,
  env?: NodeJS.ProcessEnv,
): Promise<CloudRig> {
  const dir = join(root, name)
  mkdirSync(dir)
  return cloudRig(dir, t, kind, serverAttestorToml, env)
}

/** A node alias on one of the agent's selectors and a workload entry for this uid under it. */
export async function registerWorkload(
  server: ServerProcess,
  selector: string,
  name: string,
): Promise<string> {
  const node = `spiffe://example.org/fleet/${name}`
  const app = `spiffe://example.org/fleet/${name}/app`
  await server.admin('entry', 'create', '--node', '--spiffeID', node, '--selector', selector)
  await server.admin(
    'entry',
    'create',
    '--parentID',
    node,
    '--spiffeID',
    app,
    '--selector',
    `unix:uid:${process.getuid!()}`,
  )
  return app
}

/** The workload's SVIDs over the Workload API, waiting for the agent's first sync. */
export async function workloadSvids(socket: string): Promise<string[]> {
  let last: unknown
  for (let i = 0; i < 100; i++) {
    try {
      return await fetchValidSvids(socket)
    } catch (err) {
      last = err
      await sleep(200)
    }
  }
  throw last
}

/** The agent's selectors as the server recorded them, `type:value`. */
export async function agentSelectors(server: ServerProcess, agentId: string): Promise<string[]> {
  const shown = JSON.parse(
    await server.admin('agent', 'show', '--spiffeID', agentId, '--json'),
  ) as {
    selectors: { type: string; value: string }[]
  }
  return shown.selectors.map((s) => `${s.type}:${s.value}`)
}

/** Every one of `expected` is among the agent's selectors (the message lists what there is). */
export function assertSelectors(sels: readonly string[], expected: readonly string[]): void {
  for (const s of expected) assert.ok(sels.includes(s), `${s} in ${sels.join(' ')}`)
}

/** Waits (≤ 5 s) for the server's log to match: start-up lines may still be in the pipe. */
export async function serverSaid(server: ServerProcess, re: RegExp): Promise<void> {
  for (let i = 0; i < 50 && !re.test(server.stderr()); i++) await sleep(100)
  assert.match(server.stderr(), re)
}

/**
 * Why a refusal happened (`detail`) is in the server's log, on the line with the incident id the
 * agent was told, and never in what the agent got (the agent is not authenticated yet).
 */
export async function refusedBecause(
  r: ExecResult,
  server: ServerProcess,
  detail: RegExp,
): Promise<void> {
  assert.doesNotMatch(r.stderr, detail, r.stderr)
  const incident = /server incident ([0-9a-f]{12})/.exec(r.stderr)?.[1]
  assert.ok(incident, r.stderr)
  await serverSaid(server, new RegExp(`^(?=.*${incident})(?=.*${detail.source})`, 'm'))
}

/** The agent refused by the server for `reason` (the attestor's stable tag). */
export function assertRefused(r: ExecResult, attestor: string, reason: string): void {
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, /error\[ERR_SERVER_REFUSED\]/, r.stderr)
  assert.match(r.stderr, new RegExp(`${attestor} attestation refused \\[${reason}\\]`), r.stderr)
}

export type { CloudKind }
