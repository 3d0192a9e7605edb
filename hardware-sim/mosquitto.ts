/**
 * A Mosquitto MQTT v5 broker on 127.0.0.1 for the MQTT transport: plain or TLS (a throwaway CA
 * and server certificate made here with WebCrypto). Tests own the broker process; the CLI starts
 * it detached and records it in <state>/mqtt.json so `stop` can find it again.
 */
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { x509 } from '../src/common/x509.js'
import { SimError } from '../src/errors.js'
import {
  type DynSecFiles,
  type DynSecInfo,
  dynsecConfigLines,
  prepareDynSec,
  provisionDynSec,
} from './mosquitto-dynsec.js'
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

export interface MosquittoOptions {
  readonly stateDir?: string
  readonly tls?: boolean
  readonly port?: number
  /** Detached brokers outlive this process (CLI) and are recorded in <state>/mqtt.json. */
  readonly detached?: boolean
  /** The mosquitto executable: a name looked up on PATH or a path (default 'mosquitto'). */
  readonly binary?: string
  /**
   * Load the dynamic security plugin, refuse anonymous clients, and provision the admin, the
   * roles, a bootstrap and a server client (see mosquitto-dynsec.ts). The state persists in the
   * state dir, so a restart on the same dir keeps every client.
   */
  readonly dynsec?: boolean
}

export interface MosquittoBroker {
  readonly url: string
  readonly port: number
  /** The current process (changes on restart()). */
  readonly pid: number
  /** The CA that signed the server certificate (TLS only): the one clients should trust. */
  readonly caFile?: string
  readonly stateDir: string
  /** Present when started with `dynsec: true`. */
  readonly dynsec?: DynSecInfo
  stop(): Promise<void>
  /** Stops the broker and starts it again on the same port and state (link-drop tests). */
  restart(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

interface DaemonRecord {
  readonly url: string
  readonly port: number
  readonly pid: number
  readonly ca: string | null
  readonly state: string
  readonly dynsec?: boolean
}

const RECORD = 'mqtt.json'
const START_ATTEMPTS = 3

interface TlsFiles {
  readonly cafile: string
  readonly certfile: string
  readonly keyfile: string
}

function pem(der: ArrayBuffer, label: string): string {
  return `${x509.PemConverter.encode(der, label)}\n`
}

/** Writes a fresh CA and a server certificate for 127.0.0.1/localhost into dir. */
export async function generateTlsMaterial(dir: string): Promise<TlsFiles> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const subtle = globalThis.crypto.subtle
  // A minute of back-dating tolerates small clock differences between broker and client.
  const notBefore = new Date(Date.now() - 60_000)
  const notAfter = new Date(Date.now() + 7 * 24 * 3600_000)
  const caKeys = await subtle.generateKey(alg, true, ['sign', 'verify'])
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=spiffe-edge hardware-sim MQTT CA',
    keys: caKeys,
    notBefore,
    notAfter,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  })
  const serverKeys = await subtle.generateKey(alg, true, ['sign', 'verify'])
  const server = await x509.X509CertificateGenerator.create({
    subject: 'CN=localhost',
    issuer: ca.subject,
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    notBefore,
    notAfter,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'ip', value: '127.0.0.1' },
        { type: 'dns', value: 'localhost' },
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
      await x509.SubjectKeyIdentifierExtension.create(serverKeys.publicKey),
    ],
  })
  const files: TlsFiles = {
    cafile: join(dir, 'ca.pem'),
    certfile: join(dir, 'server.pem'),
    keyfile: join(dir, 'server.key'),
  }
  writeFileSync(files.cafile, `${ca.toString('pem')}\n`, { mode: 0o644 })
  writeFileSync(files.certfile, `${server.toString('pem')}\n`, { mode: 0o644 })
  const pkcs8 = await subtle.exportKey('pkcs8', serverKeys.privateKey)
  writeFileSync(files.keyfile, pem(pkcs8, 'PRIVATE KEY'), { mode: 0o600 })
  chmodSync(files.keyfile, 0o600)
  return files
}

function writeConfig(
  dir: string,
  port: number,
  tls: TlsFiles | undefined,
  dynsec: DynSecFiles | undefined,
): string {
  const lines = [
    `listener ${port} 127.0.0.1`,
    `allow_anonymous ${dynsec ? 'false' : 'true'}`,
    'persistence false',
    'log_dest stderr',
    // Without it Nagle holds back the TLS handshake's last records behind a delayed ACK: every
    // TLS connect took ~70 ms instead of ~10 (bench/mqtt.ts). Brokers in production want it too.
    'set_tcp_nodelay true',
    // Started as root, mosquitto drops to user 'mosquitto', which cannot read our state dir.
    `user ${userInfo().username}`,
  ]
  if (tls) {
    lines.push(`cafile ${tls.cafile}`, `certfile ${tls.certfile}`, `keyfile ${tls.keyfile}`)
    lines.push('tls_version tlsv1.2')
  }
  if (dynsec) lines.push(...dynsecConfigLines(dynsec))
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(conf, `${lines.join('\n')}\n`, { mode: 0o600 })
  return conf
}

function readRecord(stateDir: string): DaemonRecord | undefined {
  const file = join(stateDir, RECORD)
  if (!existsSync(file)) return undefined
  try {
    const r = JSON.parse(readFileSync(file, 'utf8')) as Partial<DaemonRecord>
    if (typeof r.pid !== 'number' || typeof r.port !== 'number') return undefined
    return r as DaemonRecord
  } catch {
    // A torn or hand-edited record names no process we may signal.
    return undefined
  }
}

/** True when pid is alive and (where /proc tells us) still a mosquitto, not a reused pid. */
function isOurBroker(pid: number): boolean {
  if (!pidAlive(pid)) return false
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('mosquitto')
  } catch {
    return true
  }
}

/**
 * Waits for the "running" line: the port may already accept connections from whoever beat us to
 * it, and only mosquitto's own log says that it bound the listener.
 */
async function waitUntilRunning(proc: StartedProcess, logFile: string): Promise<boolean> {
  let dead = false
  void proc.exited.then(() => {
    dead = true
  })
  const deadline = Date.now() + 10000
  while (Date.now() < deadline) {
    const log = existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''
    if (/ running\b/.test(log) && !dead) return true
    if (dead) return false
    await sleep(25)
  }
  return false
}

/** Starts a broker on 127.0.0.1 and waits until it accepts connections. */
export async function startMosquitto(opts: MosquittoOptions = {}): Promise<MosquittoBroker> {
  const binary = findBinary(opts.binary ?? 'mosquitto', 'mosquitto')
  const detached = opts.detached ?? false
  if (opts.port !== undefined && !(await portIsFree(opts.port))) {
    throw new SimError('ERR_SIM_PORT_IN_USE', `127.0.0.1:${opts.port} is already in use`, {
      remedy: 'pick another --port, or leave it out to use a free one',
    })
  }
  let dir: string
  let created: string | undefined
  if (opts.stateDir === undefined) {
    dir = await mkdtemp(join(tmpdir(), 'spiffe-edge-mqtt-'))
    created = dir
  } else {
    dir = resolve(opts.stateDir)
    ensureStateDir(dir)
    const running = readRecord(dir)
    if (running && isOurBroker(running.pid)) {
      throw new SimError(
        'ERR_SIM_START_FAILED',
        `a broker (pid ${running.pid}) already runs for ${dir}`,
        {
          remedy: `stop it first: spiffe-edge sim mqtt stop --state ${dir}`,
        },
      )
    }
  }
  try {
    const tls = opts.tls ? await generateTlsMaterial(dir) : undefined
    const dynsecFiles = opts.dynsec ? prepareDynSec(dir) : undefined
    for (let attempt = 1; ; attempt++) {
      const port = opts.port ?? (await findFreePorts(1))
      const conf = writeConfig(dir, port, tls, dynsecFiles)
      const proc = await spawnBroker(binary, conf, dir, port, detached)
      if (proc === 'lost-race') {
        if (opts.port === undefined && attempt < START_ATTEMPTS) continue
        throw new SimError('ERR_SIM_START_FAILED', `mosquitto lost 127.0.0.1:${port}`, {
          remedy: 'pick another --port, or leave it out to use a free one',
        })
      }
      let dynsec: DynSecInfo | undefined
      if (dynsecFiles) {
        const url = `${tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`
        try {
          dynsec = await provisionDynSec(dir, dynsecFiles, url, tls?.cafile)
        } catch (err) {
          await proc.stop()
          throw err
        }
      }
      return makeBroker({ dir, created, port, proc, tls, detached, binary, conf, dynsec })
    }
  } catch (err) {
    if (created !== undefined) await rm(created, { recursive: true, force: true })
    throw err
  }
}

/**
 * Spawns mosquitto on conf and waits for its "running" line; 'lost-race' when another process
 * took the port first (worth a retry on another port), a SimError for anything else.
 */
async function spawnBroker(
  binary: string,
  conf: string,
  dir: string,
  port: number,
  detached: boolean,
): Promise<StartedProcess | 'lost-race'> {
  const logFile = join(dir, 'mosquitto.log')
  // One log per start, so the tail in an error message is about this attempt.
  writeFileSync(logFile, '', { mode: 0o600 })
  const proc = spawnService({ command: binary, args: ['-c', conf], logFile, detached })
  let ok = false
  try {
    await waitForPort(port, proc, 'mosquitto', logFile)
    ok = await waitUntilRunning(proc, logFile)
  } catch (err) {
    await proc.stop()
    if (/address already in use/i.test(tail(logFile, 20))) return 'lost-race'
    throw err
  }
  if (!ok) {
    await proc.stop()
    // Only a port lost to another process is worth another try; anything else is fatal.
    if (/address already in use/i.test(tail(logFile, 20))) return 'lost-race'
    throw new SimError(
      'ERR_SIM_START_FAILED',
      `mosquitto did not start on 127.0.0.1:${port}: ${tail(logFile)}`,
      { remedy: `see ${logFile}` },
    )
  }
  return proc
}

interface BrokerParts {
  readonly dir: string
  readonly created: string | undefined
  readonly port: number
  readonly proc: StartedProcess
  readonly tls: TlsFiles | undefined
  readonly detached: boolean
  readonly binary: string
  readonly conf: string
  readonly dynsec: DynSecInfo | undefined
}

function makeBroker(parts: BrokerParts): MosquittoBroker {
  const { dir, created, port, tls, detached, dynsec } = parts
  let proc = parts.proc
  const url = `${tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`
  const record = (): void => {
    if (!detached) return
    const r: DaemonRecord = {
      url,
      port,
      pid: proc.pid,
      ca: tls?.cafile ?? null,
      state: dir,
      dynsec: dynsec !== undefined,
    }
    writeFileSync(join(dir, RECORD), `${JSON.stringify(r)}\n`, { mode: 0o600 })
  }
  record()
  const stop = async (): Promise<void> => {
    await proc.stop()
    if (detached) rmSync(join(dir, RECORD), { force: true })
  }
  const restart = async (): Promise<void> => {
    await proc.stop()
    const next = await spawnBroker(parts.binary, parts.conf, dir, port, detached)
    if (next === 'lost-race') {
      throw new SimError('ERR_SIM_PORT_IN_USE', `127.0.0.1:${port} was taken while restarting`, {
        remedy: 'start a new broker on another port',
      })
    }
    proc = next
    record()
  }
  return {
    url,
    port,
    get pid() {
      return proc.pid
    },
    ...(tls ? { caFile: tls.cafile } : {}),
    stateDir: dir,
    ...(dynsec ? { dynsec } : {}),
    stop,
    restart,
    async [Symbol.asyncDispose]() {
      await stop()
      if (created !== undefined) await rm(created, { recursive: true, force: true })
    },
  }
}

/** Stops the detached broker recorded in <stateDir>/mqtt.json (CLI `stop`). */
export async function stopMosquittoDaemon(stateDir: string): Promise<void> {
  const dir = resolve(stateDir)
  const file = join(dir, RECORD)
  const record = readRecord(dir)
  try {
    if (record === undefined || !isOurBroker(record.pid)) {
      throw new SimError('ERR_SIM_NOT_RUNNING', `no broker is running for ${dir}`, {
        remedy: `start one with: spiffe-edge sim mqtt start --state ${dir}`,
      })
    }
    await stopPid(record.pid)
  } finally {
    rmSync(file, { force: true })
  }
}
