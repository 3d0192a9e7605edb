/**
 * The Workload API's transport: the Unix socket (path checks, stale-socket replacement, mode),
 * each accepted connection's kernel credentials (SO_PEERCRED) and /proc stamp, injection into
 * grpc-js, and the per-connection HTTP/2 stream-reset budget. Separate from the handlers because
 * it is the only part that knows about sockets and grpc-js internals; handlers see a caller only
 * as a connection id (call.getPeer()) to look up here.
 */
import { chmodSync, lstatSync, statSync, unlinkSync } from 'node:fs'
import type { Http2Server, Http2Session } from 'node:http2'
import { constants as h2 } from 'node:http2'
import { createServer, type Socket } from 'node:net'
import type * as grpc from '@grpc/grpc-js'
import type { Log } from '../../common/log.js'
import { secureSocketDir, socketIsLive } from '../../common/socket-dir.js'
import { WorkloadEndpointError } from './errors.js'
import { ProcFiles, type ProcStamp, procStampSync } from './proc.js'
import type { PeerInfo } from './types.js'

/**
 * HTTP/2 rapid-reset protection vs. fetch-and-cancel clients. nghttp2 (inside Node) allows a
 * client a burst of 1000 RST_STREAMs refilled at 33/s, then sends GOAWAY(INTERNAL_ERROR).
 * go-spiffe's FetchX509SVID (read the first message, cancel) costs one reset per fetch, so a
 * client fetching in a loop on one connection fails after ~1000 fetches. Node 20 does not expose
 * the limits (streamResetBurst/streamResetRate arrived in later Node lines), and raising them
 * would only weaken a defence we want against abusive callers. Instead the server mirrors the
 * bucket per connection and, well before it runs dry, recycles the connection gracefully: a
 * GOAWAY(NO_ERROR) that lets open streams (watches) finish and sends new calls to a fresh
 * connection. Well-behaved clients never see an error; the kernel-level defence stays as it is.
 */
export const RESET_BUDGET = { burst: 1000, perSecond: 33, recycleBelow: 200 } as const

/** One accepted workload connection, keyed by the id grpc-js reports as the call's peer. */
export interface Conn {
  readonly peer: PeerInfo
  readonly stamp: ProcStamp
  /** Our mirror of nghttp2's stream-reset token bucket for this connection. */
  resetTokens: number
  resetAt: number
  session?: Http2Session
  recycled: boolean
}

/** The open connections: who is on each (for attestation) and its stream-reset budget. */
export class ConnTable {
  private readonly conns = new Map<string, Conn>()
  private nextConn = 0
  private readonly log: Log

  constructor(log: Log) {
    this.log = log
  }

  get(id: string): Conn | undefined {
    return this.conns.get(id)
  }

  add(peer: PeerInfo, stamp: ProcStamp): string {
    const id = `conn-${++this.nextConn}-pid-${peer.pid}`
    this.conns.set(id, {
      peer,
      stamp,
      resetTokens: RESET_BUDGET.burst,
      resetAt: Date.now(),
      recycled: false,
    })
    return id
  }

  delete(id: string): void {
    this.conns.delete(id)
  }

  /** Counts a stream the client cancelled; recycles the connection before nghttp2 cuts it. */
  noteReset(connId: string): void {
    const c = this.conns.get(connId)
    if (!c || c.recycled) return
    const now = Date.now()
    c.resetTokens = Math.min(
      RESET_BUDGET.burst,
      c.resetTokens + ((now - c.resetAt) / 1000) * RESET_BUDGET.perSecond,
    )
    c.resetAt = now
    c.resetTokens -= 1
    if (c.resetTokens >= RESET_BUDGET.recycleBelow || !c.session) return
    c.recycled = true
    const session = c.session
    this.log('debug', 'recycling a workload connection before its stream-reset budget runs out', {
      pid: c.peer.pid,
    })
    // The first GOAWAY (max stream id) stops new streams without refusing in-flight ones; the
    // graceful close then waits for open streams (watches) to end on their own.
    try {
      session.goaway(h2.NGHTTP2_NO_ERROR, 2 ** 31 - 1)
      setTimeout(() => {
        if (!session.closed && !session.destroyed) session.close()
      }, 1000).unref()
    } catch {
      // The session is already going away.
    }
  }

  /**
   * grpc-js keeps the HTTP/2 server it made for the injector in a private map; we only listen
   * to its sessions (to recycle them, see RESET_BUDGET). Without it, recycling is skipped.
   */
  watchSessions(grpcServer: grpc.Server): void {
    const h2servers = (grpcServer as unknown as { http2Servers?: Map<Http2Server, unknown> })
      .http2Servers
    if (!(h2servers instanceof Map)) {
      this.log('warn', 'grpc-js internals changed: HTTP/2 connection recycling is off')
      return
    }
    for (const h of h2servers.keys()) {
      h.on('session', (session: Http2Session) => {
        const conn = this.conns.get(String(session.socket?.remoteAddress))
        if (conn) conn.session = session
      })
    }
  }
}

export { socketIsLive }

export async function prepareSocketPath(path: string): Promise<void> {
  secureSocketDir(path)
  let st: ReturnType<typeof lstatSync>
  try {
    st = lstatSync(path)
  } catch {
    return
  }
  if (!st.isSocket()) {
    throw new WorkloadEndpointError(
      `${path} exists and is not a socket`,
      'remove the file or choose another socket path',
    )
  }
  if (await socketIsLive(path)) {
    throw new WorkloadEndpointError(
      `another process is listening on ${path}`,
      'stop the other agent, or give this one another socket path',
    )
  }
  // A stale socket from a crashed agent: nobody answers on it, so it is safe to replace.
  unlinkSync(path)
}

export interface EndpointOptions {
  readonly socketPath: string
  readonly socketMode: number
  readonly conns: ConnTable
  readonly peerCred: (fd: number) => PeerInfo
  readonly procRoot: string
  readonly log: Log
}

export interface Endpoint {
  /** Open client sockets. */
  readonly connections: number
  /** Stops accepting and drops every open connection. */
  stopListening(): Promise<void>
  /** Removes the socket file, but only if it is still the one we created. */
  removeSocket(): void
}

/**
 * Listens on the (prepared) socket path; every accepted socket is identified by SO_PEERCRED and
 * its /proc stamp, registered in `conns`, and handed to grpc-js through `injector`.
 */
export async function listenEndpoint(
  opts: EndpointOptions,
  injector: grpc.ConnectionInjector,
): Promise<Endpoint> {
  const { conns, log } = opts
  const sockets = new Set<Socket>()
  const net = createServer((socket) => {
    const handle = (socket as unknown as { _handle?: { fd?: unknown } })._handle
    const fd = handle?.fd
    if (typeof fd !== 'number' || fd < 0) {
      log('error', 'cannot read the credentials of a workload connection: no file descriptor')
      socket.destroy()
      return
    }
    let peer: PeerInfo
    let stamp: ProcStamp
    let proc: ProcFiles | undefined
    try {
      const cred = opts.peerCred(fd)
      if (!(cred.pid > 0)) throw new Error(`kernel reported pid ${cred.pid}`)
      proc = ProcFiles.open(cred.pid, opts.procRoot)
      peer = { pid: cred.pid, uid: cred.uid, gid: cred.gid, proc }
      stamp = procStampSync(peer.pid, opts.procRoot, proc)
    } catch (err) {
      proc?.close()
      // The caller is gone already, or we cannot identify it: nothing can be served.
      log('warn', 'dropping a workload connection we cannot identify', {
        error: (err as Error).message,
      })
      socket.destroy()
      return
    }
    const id = conns.add(peer, stamp)
    sockets.add(socket)
    socket.once('close', () => {
      conns.delete(id)
      sockets.delete(socket)
      proc.close()
    })
    // grpc-js reports socket.remoteAddress as the call's peer: make it our connection key.
    Object.defineProperty(socket, 'remoteAddress', { value: id, configurable: true })
    injector.injectConnection(socket)
  })
  await new Promise<void>((resolve, reject) => {
    net.once('error', (err) =>
      reject(
        new WorkloadEndpointError(
          `cannot listen on ${opts.socketPath}: ${err.message}`,
          'check the directory permissions and that no other agent uses this path',
          err,
        ),
      ),
    )
    net.listen(opts.socketPath, () => resolve())
  })
  chmodSync(opts.socketPath, opts.socketMode)
  const ino = statSync(opts.socketPath).ino
  return {
    get connections() {
      return sockets.size
    },
    stopListening: () =>
      new Promise<void>((resolve) => {
        net.close(() => resolve())
        for (const s of sockets) s.destroy()
      }),
    removeSocket: () => {
      try {
        // libuv unlinks the socket on close; only remove what is still ours if it did not.
        if (statSync(opts.socketPath).ino === ino) unlinkSync(opts.socketPath)
      } catch {
        // already gone
      }
    },
  }
}
