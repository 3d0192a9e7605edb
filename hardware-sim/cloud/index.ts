/**
 * `startCloudSim({kind})`: a simulated AWS, GCP or Azure instance-metadata service in its own
 * process on 127.0.0.1, with the signing material a test server is configured to trust (AWS: a
 * certificate; GCP/Azure: a JWKS). Tests own the process (`await using`); the CLI starts it
 * detached and records it in <state>/cloud-<kind>.json for `stop`.
 */
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { SimError } from '../../src/errors.js'
import { ensureStateDir, pidAlive, portIsFree, spawnService, stopPid, tail } from '../process.js'
import type { CloudKind } from './keys.js'
import type { CloudIdentity } from './service.js'

export type { CloudKind } from './keys.js'
export type { CloudIdentity } from './service.js'
export { DEFAULT_IDENTITY } from './service.js'

export const CLOUD_KINDS: readonly CloudKind[] = ['aws', 'gcp', 'azure']

export interface CloudSimOptions {
  readonly kind: CloudKind
  readonly stateDir?: string
  readonly port?: number
  readonly identity?: CloudIdentity
  readonly detached?: boolean
}

export interface CloudSim {
  readonly kind: CloudKind
  /** The metadata_url an agent is configured with. */
  readonly url: string
  readonly port: number
  readonly pid: number
  readonly stateDir: string
  /** AWS: the certificate PEM; GCP/Azure: the JWKS JSON the server trusts. */
  readonly trust: string
  /** GCP: the service-account key file for the server's service_account_file (Compute API). */
  readonly credentials?: string
  stop(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

interface SimRecord {
  readonly url: string
  readonly port: number
  readonly pid: number
  readonly trust: string
  readonly credentials?: string
  readonly state: string
}

const recordFile = (dir: string, kind: CloudKind) => join(dir, `cloud-${kind}.json`)

function readRecord(dir: string, kind: CloudKind): SimRecord | undefined {
  const f = recordFile(dir, kind)
  if (!existsSync(f)) return undefined
  try {
    const r = JSON.parse(readFileSync(f, 'utf8')) as Partial<SimRecord>
    return typeof r.pid === 'number' && typeof r.port === 'number' ? (r as SimRecord) : undefined
  } catch {
    return undefined
  }
}

/** The running daemon for a state dir, if its process is alive. */
export function runningCloudSim(stateDir: string, kind: CloudKind): SimRecord | undefined {
  const r = readRecord(resolve(stateDir), kind)
  return r && pidAlive(r.pid) ? r : undefined
}

export async function startCloudSim(opts: CloudSimOptions): Promise<CloudSim> {
  if (!CLOUD_KINDS.includes(opts.kind)) {
    throw new SimError('ERR_SIM_START_FAILED', `unknown cloud '${opts.kind}'`, {
      remedy: `use one of ${CLOUD_KINDS.join(', ')}`,
    })
  }
  if (opts.port !== undefined && !(await portIsFree(opts.port))) {
    throw new SimError('ERR_SIM_PORT_IN_USE', `127.0.0.1:${opts.port} is already in use`, {
      remedy: 'pick another --port, or leave it out to use a free one',
    })
  }
  let dir: string
  let created: string | undefined
  if (opts.stateDir === undefined) {
    dir = await mkdtemp(join(tmpdir(), `spiffe-edge-${opts.kind}-sim-`))
    created = dir
  } else {
    dir = resolve(opts.stateDir)
    ensureStateDir(dir)
    const running = runningCloudSim(dir, opts.kind)
    if (running) {
      throw new SimError(
        'ERR_SIM_START_FAILED',
        `a ${opts.kind} metadata service (pid ${running.pid}) already runs for ${dir}`,
        {
          remedy: `stop it first: spiffe-edge sim cloud ${opts.kind} stop --state ${dir}`,
        },
      )
    }
  }
  const logFile = join(dir, `cloud-${opts.kind}.log`)
  const daemon = join(dirname(fileURLToPath(import.meta.url)), 'daemon.js')
  const proc = spawnService({
    command: process.execPath,
    args: [daemon, opts.kind, dir, String(opts.port ?? 0), JSON.stringify(opts.identity ?? {})],
    logFile,
    detached: opts.detached ?? false,
  })
  let dead = false
  void proc.exited.then(() => {
    dead = true
  })
  // Key generation (RSA-2048) and the first signatures take a second or two on a busy machine.
  const deadline = Date.now() + 30_000
  let rec: SimRecord | undefined
  while (Date.now() < deadline && !dead) {
    rec = readRecord(dir, opts.kind)
    if (rec && rec.pid === proc.pid) break
    rec = undefined
    await sleep(50)
  }
  if (!rec) {
    await proc.stop()
    if (created) await rm(created, { recursive: true, force: true })
    throw new SimError(
      'ERR_SIM_START_FAILED',
      `the ${opts.kind} metadata service did not start: ${tail(logFile)}`,
      {
        remedy: `see ${logFile}`,
      },
    )
  }
  const stop = async () => {
    await proc.stop()
    if (created) await rm(created, { recursive: true, force: true })
  }
  return {
    kind: opts.kind,
    url: rec.url,
    port: rec.port,
    pid: rec.pid,
    stateDir: dir,
    trust: rec.trust,
    ...(rec.credentials ? { credentials: rec.credentials } : {}),
    stop,
    [Symbol.asyncDispose]: stop,
  }
}

/** CLI `stop`: the daemon recorded for the state dir. */
export async function stopCloudSimDaemon(
  stateDir: string,
  kind: CloudKind,
): Promise<{ pid: number }> {
  const dir = resolve(stateDir)
  const r = readRecord(dir, kind)
  if (!r || !pidAlive(r.pid)) {
    throw new SimError('ERR_SIM_NOT_RUNNING', `no ${kind} metadata service runs for ${dir}`, {
      remedy: `start one: spiffe-edge sim cloud ${kind} start --state ${dir}`,
    })
  }
  // Only a process that is still our daemon is signalled, not a reused pid.
  try {
    if (!readFileSync(`/proc/${r.pid}/cmdline`, 'utf8').includes('daemon.js')) {
      throw new SimError(
        'ERR_SIM_NOT_RUNNING',
        `pid ${r.pid} is no longer the ${kind} metadata service`,
        {
          remedy: `remove ${recordFile(dir, kind)}`,
        },
      )
    }
  } catch (err) {
    if (err instanceof SimError) throw err
  }
  await stopPid(r.pid)
  return { pid: r.pid }
}
