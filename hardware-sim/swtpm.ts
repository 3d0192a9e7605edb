/**
 * swtpm with its own "manufacturer": each state directory gets a private local CA (root + issuing
 * CA, made by swtpm_localca on first use) that signs the EK certificates swtpm_setup writes into NV.
 * Never the system-wide /var/lib/swtpm-localca, so every test and every fleet CI job has an
 * isolated trust root, exactly like a distinct TPM vendor.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { SimError } from '../src/errors.js'
import {
  ensureStateDir,
  findBinary,
  findFreePorts,
  pidAlive,
  portIsFree,
  type StartedProcess,
  spawnService,
  stopPid,
  tail,
  waitForPort,
} from './process.js'

export interface SwtpmOptions {
  /** Where the TPM state and its manufacturer CA live; a temp dir (removed on dispose) if absent. */
  readonly stateDir?: string
  /** Server port; the control channel takes port + 1. Free ports are picked if absent. */
  readonly port?: number
  /** A detached daemon that outlives this process (the CLI); tests own their child. */
  readonly detached?: boolean
  /** PCR banks to activate at manufacture. */
  readonly pcrBanks?: string
  /** Override binary locations (tests use this to prove the missing-binary error). */
  readonly binaries?: {
    readonly swtpm?: string
    readonly swtpmSetup?: string
    readonly localca?: string
  }
}

/** What `sim tpm start` prints and what tests get; the JSON form uses the snake_case keys. */
export interface SwtpmInfo {
  readonly tcti: string
  readonly port: number
  readonly ctrlPort: number
  readonly pid: number
  readonly stateDir: string
  /** PEM: the manufacturer root CA followed by the issuing CA. */
  readonly ekCaBundle: string
}

export interface SwtpmInstance extends SwtpmInfo, AsyncDisposable {
  stop(): Promise<void>
}

const STATE_FILE = 'swtpm.json'

function paths(stateDir: string) {
  return {
    tpm: join(stateDir, 'tpm'),
    ca: join(stateDir, 'ca'),
    setupConf: join(stateDir, 'swtpm_setup.conf'),
    bundle: join(stateDir, 'ek-ca-bundle.pem'),
    setupLog: join(stateDir, 'swtpm_setup.log'),
    log: join(stateDir, 'swtpm.log'),
    stateFile: join(stateDir, STATE_FILE),
  }
}

/** True when the state dir already holds a manufactured TPM (its EKs are kept on restart). */
export function isManufactured(stateDir: string): boolean {
  const p = paths(stateDir)
  return existsSync(join(p.tpm, 'tpm2-00.permall')) && existsSync(p.bundle)
}

function run(command: string, args: readonly string[], logFile: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.once('error', reject)
    child.once('close', (code) => {
      writeFileSync(logFile, output, { mode: 0o600 })
      if (code === 0) resolvePromise()
      else
        reject(
          new SimError(
            'ERR_SIM_COMMAND_FAILED',
            `${command} exited with ${code}: ${tail(logFile)}`,
            {
              remedy: `see ${logFile}`,
            },
          ),
        )
    })
  })
}

/**
 * Manufactures a TPM in stateDir: a private local CA, then swtpm_setup with an RSA-2048 and an
 * ECC EK, EK certificates in NV (NVRAM locked afterwards, as on a shipped chip) and a platform
 * certificate. A decrypt-only EK, per the TCG EK profile: no --allow-signing.
 */
export async function manufactureSwtpm(stateDir: string, opts: SwtpmOptions = {}): Promise<void> {
  const dir = resolve(stateDir)
  ensureStateDir(dir)
  const p = paths(dir)
  const swtpm = findBinary(opts.binaries?.swtpm ?? 'swtpm', 'swtpm')
  const setup = findBinary(opts.binaries?.swtpmSetup ?? 'swtpm_setup', 'swtpm-tools')
  const localca = findBinary(opts.binaries?.localca ?? 'swtpm_localca', 'swtpm-tools')
  rmSync(p.tpm, { recursive: true, force: true })
  mkdirSync(p.tpm, { recursive: true, mode: 0o700 })
  mkdirSync(p.ca, { recursive: true, mode: 0o700 })
  writeFileSync(
    join(p.ca, 'swtpm-localca.conf'),
    [
      `statedir = ${p.ca}`,
      `signingkey = ${join(p.ca, 'signkey.pem')}`,
      `issuercert = ${join(p.ca, 'issuercert.pem')}`,
      `certserial = ${join(p.ca, 'certserial')}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  )
  writeFileSync(
    join(p.ca, 'swtpm-localca.options'),
    '--platform-manufacturer spiffe-edge\n--platform-version 1.0\n--platform-model hardware-sim\n',
    { mode: 0o600 },
  )
  writeFileSync(
    p.setupConf,
    [
      `create_certs_tool = ${localca}`,
      `create_certs_tool_config = ${join(p.ca, 'swtpm-localca.conf')}`,
      `create_certs_tool_options = ${join(p.ca, 'swtpm-localca.options')}`,
      `active_pcr_banks = ${opts.pcrBanks ?? 'sha1,sha256'}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  )
  await run(
    setup,
    [
      '--tpm2',
      '--tpm',
      // swtpm_setup runs this command line, so it needs the 'socket' front end named.
      `${swtpm} socket`,
      '--tpm-state',
      p.tpm,
      '--config',
      p.setupConf,
      '--create-ek-cert',
      '--create-platform-cert',
      '--lock-nvram',
      '--overwrite',
      '--pcr-banks',
      opts.pcrBanks ?? 'sha1,sha256',
    ],
    p.setupLog,
  )
  const root = join(p.ca, 'swtpm-localca-rootca-cert.pem')
  const issuing = join(p.ca, 'issuercert.pem')
  if (!existsSync(root) || !existsSync(issuing)) {
    throw new SimError(
      'ERR_SIM_COMMAND_FAILED',
      'swtpm_localca did not create its CA certificates',
      {
        remedy: `see ${p.setupLog}`,
      },
    )
  }
  writeFileSync(p.bundle, readFileSync(root, 'utf8') + readFileSync(issuing, 'utf8'), {
    mode: 0o644,
  })
}

async function assertPortsFree(port: number): Promise<void> {
  for (const p of [port, port + 1]) {
    if (!(await portIsFree(p))) {
      throw new SimError('ERR_SIM_PORT_IN_USE', `port ${p} on 127.0.0.1 is already in use`, {
        remedy: `swtpm needs ports ${port} and ${port + 1}: pick another --port or omit it`,
      })
    }
  }
}

/**
 * Starts swtpm on loopback, manufacturing it first if the state dir is new. Restarting on an
 * existing state dir keeps the same TPM (same EKs and certificates).
 */
export async function startSwtpm(opts: SwtpmOptions = {}): Promise<SwtpmInstance> {
  const createdTemp = opts.stateDir === undefined
  const stateDir = resolve(opts.stateDir ?? mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-')))
  const cleanup = () => {
    if (createdTemp) rmSync(stateDir, { recursive: true, force: true })
  }
  try {
    const swtpm = findBinary(opts.binaries?.swtpm ?? 'swtpm', 'swtpm')
    ensureStateDir(stateDir)
    if (opts.port !== undefined) await assertPortsFree(opts.port)
    if (!isManufactured(stateDir)) await manufactureSwtpm(stateDir, opts)
    const p = paths(stateDir)
    // Without --port, a parallel test can take our ports between the check and the bind: retry.
    for (let attempt = 0; ; attempt++) {
      const port = opts.port ?? (await findFreePorts(2))
      const proc = spawnService({
        command: swtpm,
        args: [
          'socket',
          '--tpm2',
          '--tpmstate',
          `dir=${p.tpm}`,
          '--server',
          `type=tcp,port=${port},bindaddr=127.0.0.1`,
          '--ctrl',
          `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
          '--flags',
          'not-need-init,startup-clear',
        ],
        logFile: p.log,
        detached: opts.detached ?? false,
      })
      try {
        await waitForPort(port, proc, 'swtpm', p.log)
      } catch (err) {
        await proc.stop()
        if (opts.port === undefined && attempt < 3) continue
        throw err
      }
      const info: SwtpmInfo = {
        tcti: `swtpm:host=127.0.0.1,port=${port}`,
        port,
        ctrlPort: port + 1,
        pid: proc.pid,
        stateDir,
        ekCaBundle: p.bundle,
      }
      if (opts.detached)
        writeFileSync(p.stateFile, `${JSON.stringify(toJson(info))}\n`, { mode: 0o600 })
      return instance(info, proc, cleanup)
    }
  } catch (err) {
    cleanup()
    throw err
  }
}

function instance(info: SwtpmInfo, proc: StartedProcess, cleanup: () => void): SwtpmInstance {
  let stopped = false
  const stop = async () => {
    if (stopped) return
    stopped = true
    await proc.stop()
    rmSync(paths(info.stateDir).stateFile, { force: true })
    cleanup()
  }
  return { ...info, stop, [Symbol.asyncDispose]: stop }
}

/** The JSON line `sim tpm start` prints (the keys the issue and the docs name). */
export function toJson(info: SwtpmInfo): Record<string, string | number> {
  return {
    tcti: info.tcti,
    ek_ca_bundle: info.ekCaBundle,
    pid: info.pid,
    state: info.stateDir,
    port: info.port,
    ctrl_port: info.ctrlPort,
  }
}

/** The daemon recorded in stateDir, if it is still running. */
export function runningSwtpm(stateDir: string): SwtpmInfo | undefined {
  const file = paths(resolve(stateDir)).stateFile
  if (!existsSync(file)) return undefined
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
    const pid = Number(j.pid)
    if (!Number.isInteger(pid) || !pidAlive(pid)) return undefined
    return {
      tcti: String(j.tcti),
      port: Number(j.port),
      ctrlPort: Number(j.ctrl_port),
      pid,
      stateDir: String(j.state),
      ekCaBundle: String(j.ek_ca_bundle),
    }
  } catch {
    return undefined
  }
}

/** Stops the daemon `sim tpm start` left running in stateDir (state is kept for a restart). */
export async function stopSwtpmDaemon(stateDir: string): Promise<SwtpmInfo> {
  const info = runningSwtpm(stateDir)
  const file = paths(resolve(stateDir)).stateFile
  if (!info) {
    rmSync(file, { force: true })
    throw new SimError(
      'ERR_SIM_NOT_RUNNING',
      `no swtpm is running for state ${resolve(stateDir)}`,
      {
        remedy: 'start one with `spiffe-edge sim tpm start --state DIR`',
      },
    )
  }
  await stopPid(info.pid)
  rmSync(file, { force: true })
  return info
}
