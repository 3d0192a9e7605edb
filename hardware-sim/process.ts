/**
 * Process plumbing shared by the simulators: find binaries, pick free loopback ports, start a
 * service as an owned child (tests) or a detached daemon (CLI), wait until it listens, stop it.
 * Owned children are also killed when this process exits, so a failing test leaves nothing behind.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { accessSync, closeSync, constants, mkdirSync, openSync, readFileSync } from 'node:fs'
import { createConnection, createServer } from 'node:net'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SimError } from '../src/errors.js'

/** Finds an executable on PATH (or an absolute path); throws ERR_SIM_BINARY_MISSING. */
export function findBinary(name: string, debianPackage: string, env = process.env): string {
  const candidates = name.includes('/')
    ? [name]
    : [
        ...(env.PATH ?? '').split(delimiter).filter(Boolean),
        // Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
        '/usr/sbin',
        '/sbin',
      ].map((dir) => join(dir, name))
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK)
      return c
    } catch {
      // keep looking
    }
  }
  throw new SimError(
    'ERR_SIM_BINARY_MISSING',
    `${name} was not found (searched PATH and /usr/sbin)`,
    {
      remedy: `install it (Debian: apt-get install ${debianPackage}) or run scripts/install.sh`,
    },
  )
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function portAcceptsConnections(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** True when we can bind 127.0.0.1:port right now. */
export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)))
  })
}

/**
 * Picks `count` consecutive free loopback ports (swtpm needs server + control on P and P+1).
 * Random in a high range, so parallel test processes rarely collide; callers retry on a lost race.
 */
export async function findFreePorts(count = 1): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000)
    let ok = true
    for (let i = 0; i < count && ok; i++) ok = await portIsFree(base + i)
    if (ok) return base
  }
  throw new SimError('ERR_SIM_PORT_IN_USE', `no ${count} consecutive free loopback ports found`, {
    remedy: 'free some loopback ports or pass --port explicitly',
  })
}

/** Creates a state directory (0700) or throws ERR_SIM_STATE_DIR with the reason. */
export function ensureStateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    accessSync(dir, constants.W_OK)
  } catch (err) {
    throw new SimError(
      'ERR_SIM_STATE_DIR',
      `state directory ${dir} is not usable: ${(err as Error).message}`,
      {
        cause: err,
        remedy: 'pass a --state directory you can create and write to',
      },
    )
  }
}

const owned = new Set<ChildProcess>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // 'exit' handlers must be synchronous: kill() is.
  process.once('exit', () => {
    for (const child of owned) child.kill('SIGKILL')
  })
}

export interface StartedProcess {
  readonly pid: number
  /** Resolves when the process has exited. */
  readonly exited: Promise<number | null>
  /** Stops it (SIGTERM, then SIGKILL after a grace period). */
  stop(): Promise<void>
}

export interface SpawnServiceOptions {
  readonly command: string
  readonly args: readonly string[]
  /** Where stdout/stderr go; read back to explain a failed start. */
  readonly logFile: string
  /** Detached daemons outlive this process (CLI); owned children do not (tests). */
  readonly detached: boolean
  readonly env?: NodeJS.ProcessEnv
}

export function spawnService(opts: SpawnServiceOptions): StartedProcess {
  const fd = openSync(opts.logFile, 'a', 0o600)
  let child: ChildProcess
  try {
    child = spawn(opts.command, opts.args, {
      detached: opts.detached,
      stdio: ['ignore', fd, fd],
      env: opts.env ?? process.env,
    })
  } finally {
    closeSync(fd)
  }
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode)
    child.once('exit', (code) => resolve(code))
    child.once('error', () => resolve(-1))
  })
  if (opts.detached) {
    child.unref()
  } else {
    installExitHook()
    owned.add(child)
    void exited.then(() => owned.delete(child))
  }
  if (child.pid === undefined) {
    throw new SimError('ERR_SIM_START_FAILED', `could not start ${opts.command}`, {
      remedy: 'check that the binary is executable',
    })
  }
  const pid = child.pid
  return {
    pid,
    exited,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const done = await Promise.race([
        exited.then(() => true),
        sleep(3000, undefined, { ref: false }).then(() => false),
      ])
      if (!done) {
        child.kill('SIGKILL')
        await exited
      }
    },
  }
}

/** Waits until the port accepts connections, the process dies, or the deadline passes. */
export async function waitForPort(
  port: number,
  proc: { readonly exited: Promise<number | null> } | undefined,
  what: string,
  logFile: string,
  timeoutMs = 10000,
): Promise<void> {
  let dead = false
  void proc?.exited.then(() => {
    dead = true
  })
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await portAcceptsConnections(port)) return
    if (dead) break
    await sleep(25)
  }
  throw new SimError(
    'ERR_SIM_START_FAILED',
    `${what} did not start listening on 127.0.0.1:${port}: ${tail(logFile)}`,
    {
      remedy: `see ${logFile}`,
    },
  )
}

/** The last lines of a log file, for error messages. */
export function tail(file: string, lines = 5): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ') || '(empty log)'
  } catch {
    return '(no log)'
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Stops a daemon by pid (CLI `stop`): SIGTERM, wait, SIGKILL. */
export async function stopPid(pid: number, graceMs = 3000): Promise<void> {
  if (!pidAlive(pid)) return
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + graceMs
  while (Date.now() < deadline) {
    if (!pidAlive(pid)) return
    await sleep(25)
  }
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // already gone
  }
}
