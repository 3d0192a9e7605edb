/** Processes for the offline tests: a TPM server and agent as operators run them, a workload fetch. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type SwtpmInstance, startSwtpm } from '../../hardware-sim/swtpm.js'
import { CACHE_FILE } from '../../src/agent/cache/sealed-svids.js'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { validateX509Svid } from '../../src/spiffe/x509-svid.js'
import { type CliProcess, startCli } from './cli-process.js'
import { cli } from './exec.js'

type After = { after: (fn: () => Promise<void>) => void }

export interface Served {
  readonly spiffeId: string
  /** The leaf certificate, hex: equal means the very same SVID. */
  readonly leaf: string
  readonly notAfter: number
}

/** One FetchX509SVID as a workload does it, each SVID validated against its bundle now. */
export async function fetchServed(socketPath: string, timeoutMs = 3000): Promise<Served> {
  const td = TrustDomain.parse('example.org')
  const c = workloadClient(`unix://${socketPath}`, { ownConnection: true, timeoutMs })
  try {
    const r = await c.fetchX509()
    const s = r.svids[0]
    if (!s) throw new Error('no SVIDs')
    const bundle = new TrustBundle({ trustDomain: td, x509Authorities: s.bundle }).x509Bundle()
    const v = validateX509Svid(s.chain, (d) => (d.equals(td) ? bundle : undefined), new Date())
    return {
      spiffeId: v.spiffeId.toString(),
      leaf: Buffer.from(s.chain[0]!).toString('hex'),
      notAfter: v.leaf.notAfter.getTime(),
    }
  } finally {
    c.close()
  }
}

export async function until<T>(
  what: string,
  ms: number,
  fn: () => Promise<T | undefined>,
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
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${String(last)}`)
    await sleep(200)
  }
}

export interface TpmServer extends CliProcess {
  readonly address: string
  readonly port: number
  readonly adminSocket: string
}

/** `server run` with the TPM attestor (EKs from `ekCa`), data in `dir/server`, on `port` (0: any). */
export async function startTpmServer(
  dir: string,
  ekCa: string,
  t: After,
  toml: string,
  port = 0,
): Promise<TpmServer> {
  const config = join(dir, 'server.conf')
  writeFileSync(
    config,
    `[server]\ntrust_domain = "example.org"\ndata_dir = "./server"\nadmin_socket = "./server/admin.sock"\nlog_level = "info"\nattest_rate_per_second = 1000\n${toml}\n` +
      `[plugins.KeyManager.disk]\n[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(ekCa)}\n[plugins.NodeAttestor.join_token]\n`,
  )
  const p = await startCli(['server', 'run', '--config', config, '--port', String(port)], t)
  const address = String(p.first.listening)
  return {
    ...p,
    address,
    port: Number(address.split(':').pop()),
    adminSocket: String(p.first.admin_socket),
  }
}

/** Writes the TPM agent's config into `dir` (data in dir/agent); returns `agent run` arguments. */
export function tpmAgentArgs(dir: string, address: string, tcti: string, toml: string): string[] {
  const config = join(dir, 'agent.conf')
  writeFileSync(
    config,
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${address}"\ndata_dir = "./agent"\n` +
      `socket_path = "./agent/api.sock"\ninsecure_bootstrap = true\nlog_level = "info"\nsync_interval = "1s"\n${toml}\n` +
      `[plugins.NodeAttestor.tpm]\ntcti = "${tcti}"\n[plugins.WorkloadAttestor.unix]\n`,
  )
  return ['agent', 'run', '--config', config]
}

/** A workload entry for this test's uid under `parentId`. */
export async function createEntry(adminSocket: string, parentId: string, spiffeId: string) {
  const r = await cli([
    'server',
    'entry',
    'create',
    '--admin-socket',
    adminSocket,
    '--parentID',
    parentId,
    '--spiffeID',
    spiffeId,
    '--selector',
    `unix:uid:${process.getuid!()}`,
  ])
  if (r.code !== 0) throw new Error(`entry create: ${r.stderr}`)
}

/**
 * Waits until the agent's sealed cache holds `n` records: it is written after issuance, and the
 * first write also creates the TPM key that wraps it (RSA generation, slow on a busy machine).
 */
export function cacheWritten(agentDataDir: string, n = 1): Promise<true> {
  return until('the sealed SVID cache', 60_000, async () => {
    const f = JSON.parse(readFileSync(join(agentDataDir, CACHE_FILE), 'utf8')) as {
      records: unknown[]
    }
    return f.records.length >= n ? true : undefined
  })
}

/** SIGKILL, as a power cut or the OOM killer would. */
export async function kill9(p: CliProcess): Promise<void> {
  p.child.kill('SIGKILL')
  await p.exited
}

export interface RebootableTpm {
  /** The test's own directory (server and agent data). */
  readonly dir: string
  /** The running swtpm; a new instance after each reboot. */
  readonly sim: SwtpmInstance
  /** A power cycle: swtpm stopped and started again on its port, from the same state. */
  reboot(): Promise<void>
}

/** A test directory and a swtpm whose state outlives its restarts; both gone after the test. */
export async function rebootableTpm(t: After, name: string): Promise<RebootableTpm> {
  const dir = mkdtempSync(join(tmpdir(), `spiffe-edge-${name}-`))
  const simDir = mkdtempSync(join(tmpdir(), `spiffe-edge-${name}-tpm-`))
  let sim = await startSwtpm({ stateDir: simDir })
  t.after(async () => {
    await sim.stop()
    rmSync(dir, { recursive: true, force: true })
    rmSync(simDir, { recursive: true, force: true })
  })
  return {
    dir,
    get sim() {
      return sim
    },
    async reboot() {
      const port = sim.port
      await sim.stop()
      sim = await startSwtpm({ stateDir: simDir, port })
    },
  }
}

export interface ServingAgent {
  readonly server: TpmServer
  /** `agent run` arguments, to start the same agent again. */
  readonly args: string[]
  readonly agent: CliProcess
  readonly socket: string
  /** The first SVID served for the entry. */
  readonly first: Served
}

/**
 * The common arrangement of the offline tests: a TPM server (`serverToml`) and agent
 * (`agentToml`) in `dir`, an entry for `spiffeId`, its first SVID served and in the sealed cache.
 */
export async function servingTpmAgent(
  dir: string,
  sim: SwtpmInstance,
  t: After,
  o: { serverToml: string; agentToml: string; spiffeId: string },
): Promise<ServingAgent> {
  const server = await startTpmServer(dir, sim.ekCaBundle, t, o.serverToml)
  const args = tpmAgentArgs(dir, server.address, sim.tcti, o.agentToml)
  const agent = await startCli(args, t)
  const socket = String(agent.first.socket_path)
  await createEntry(server.adminSocket, String(agent.first.agent_id), o.spiffeId)
  const first = await until('a first SVID', 30_000, () => fetchServed(socket))
  await cacheWritten(join(dir, 'agent'))
  return { server, args, agent, socket, first }
}
