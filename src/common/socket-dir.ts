/**
 * The directory the Workload API socket lives in must be ours. If another local user could create
 * it (say /tmp/spiffe-edge-agent/public before the agent first runs), or write to it, or to an
 * ancestor without the sticky bit, they could later replace the socket with their own and serve
 * forged identities to every workload. So every path component is lstat'ed: the ones we create are
 * made one at a time and checked after mkdir; the ones we accept must be owned by root or by the
 * agent's user and not writable by group/others (sticky directories such as /tmp excepted for
 * ancestors, never for the socket directory itself). The socket directory may not be a symlink;
 * an ancestor symlink (/var/run → /run) is accepted only when root or the agent's user owns it,
 * and its target is then checked like any other component.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, type Stats, statSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname, isAbsolute, resolve, sep } from 'node:path'
import { type ErrorCode, SpiffeEdgeError } from '../errors.js'

/**
 * The admin socket both `server run` and every `server` CLI verb use when none is named, as
 * spire-server's /tmp/spire-server/private/api.sock: an absolute path, so the CLI finds the
 * server from any working directory. `private` is created 0700 (0750 with admin_socket_group).
 */
export const DEFAULT_ADMIN_SOCKET = '/tmp/spiffe-edge-server/private/api.sock'

/** Whose socket this is, for messages, and the error code callers branch on. */
export interface SocketDirUse {
  readonly what: string
  readonly code: ErrorCode
  /** Mode for the socket's own directory when we create it (ancestors are 0755); default 0755. */
  readonly dirMode?: number
  /** Group for the socket's own directory when we create it (admin_socket_group members traverse it). */
  readonly dirGid?: number
}

/** Is something accepting connections on this socket path? */
export function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path)
    const done = (live: boolean) => {
      s.destroy()
      resolve(live)
    }
    s.setTimeout(1000, () => done(true)) // a listener too busy to accept is still a listener
    s.once('connect', () => done(true))
    s.once('error', () => done(false))
  })
}

const WORKLOAD: SocketDirUse = { what: 'the Workload API socket', code: 'ERR_WORKLOAD_ENDPOINT' }

class SocketDirError extends SpiffeEdgeError {
  constructor(use: SocketDirUse, message: string, remedy: string, cause?: unknown) {
    super(use.code, message, { remedy, cause })
  }
}

const S_ISVTX = 0o1000

function trustedOwner(uid: number, euid: number): boolean {
  return uid === 0 || uid === euid
}

function refuse(use: SocketDirUse, dir: string, why: string): never {
  throw new SocketDirError(
    use,
    `refusing the socket directory ${dir}: ${why}`,
    `another local user could replace ${use.what} there: remove the directory ` +
      '(the agent creates it, mode 0755) or make it owned by root or the agent user and not ' +
      'writable by group or others (chown, chmod 0755), or choose another socket path',
  )
}

function lstatOrUndefined(use: SocketDirUse, p: string): Stats | undefined {
  try {
    return lstatSync(p)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new SocketDirError(
      use,
      `cannot inspect ${p}: ${(err as Error).message}`,
      'check the permissions of the socket path',
      err,
    )
  }
}

function checkDir(
  use: SocketDirUse,
  p: string,
  st: Stats,
  euid: number,
  isSocketDir: boolean,
): void {
  if (!st.isDirectory()) refuse(use, p, 'it is not a directory')
  if (!trustedOwner(st.uid, euid)) {
    refuse(use, p, `it is owned by uid ${st.uid}, not by root or our uid ${euid}`)
  }
  const writableByOthers = (st.mode & 0o022) !== 0
  if (writableByOthers && (isSocketDir || (st.mode & S_ISVTX) === 0)) {
    refuse(use, p, `it is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`)
  }
}

/** Creates the socket's directory (use.dirMode, 0755 by default) or checks an existing one; throws use.code. */
export function secureSocketDir(
  socketPath: string,
  euid = process.geteuid?.() ?? 0,
  use: SocketDirUse = WORKLOAD,
): void {
  const dir = resolve(dirname(socketPath))
  if (!isAbsolute(dir)) refuse(use, dir, 'the path is not absolute')
  const parts = dir.split(sep).filter((p) => p !== '')
  let cur: string = sep
  checkDir(use, cur, statSync(cur), euid, parts.length === 0)
  for (let i = 0; i < parts.length; i++) {
    cur = cur === sep ? `${sep}${parts[i]}` : `${cur}${sep}${parts[i]}`
    const isSocketDir = i === parts.length - 1
    let st = lstatOrUndefined(use, cur)
    if (st === undefined) {
      const mode = isSocketDir ? (use.dirMode ?? 0o755) : 0o755
      try {
        mkdirSync(cur, { mode }) // one level at a time: each new one is checked below
        chmodSync(cur, mode) // mkdir's mode is masked by the umask
        if (isSocketDir && use.dirGid !== undefined) chownSync(cur, euid, use.dirGid)
      } catch (err) {
        throw new SocketDirError(
          use,
          `cannot create the socket directory ${cur}: ${(err as Error).message}`,
          `create it (mode ${mode.toString(8).padStart(4, '0')}, owned by our user) or choose another socket path`,
          err,
        )
      }
      st = lstatSync(cur)
    }
    if (st.isSymbolicLink()) {
      if (isSocketDir) refuse(use, cur, 'it is a symbolic link')
      if (!trustedOwner(st.uid, euid))
        refuse(use, cur, `it is a symbolic link owned by uid ${st.uid}`)
      st = statSync(cur) // the target directory, checked like any other component
    }
    checkDir(use, cur, st, euid, isSocketDir)
  }
}
