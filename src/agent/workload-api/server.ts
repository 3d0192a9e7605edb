/**
 * The SPIFFE Workload API endpoint: gRPC on a Unix socket, serving each caller the identities its
 * attested selectors entitle it to. We own the net.Server so every accepted socket can be tagged
 * with its kernel credentials (SO_PEERCRED) before grpc-js sees it; grpc-js then runs HTTP/2 over
 * the injected socket and handlers find the caller again through call.getPeer().
 *
 * Everything served comes from the WorkloadSource (the agent's cache): no handler waits on the
 * SPIRE-like server, so a network outage never stalls a workload.
 */
import { chmodSync, lstatSync, statSync, unlinkSync } from 'node:fs'
import type { Http2Server, Http2Session } from 'node:http2'
import { constants as h2 } from 'node:http2'
import { connect, createServer, type Socket } from 'node:net'
import * as grpc from '@grpc/grpc-js'
import { type Log, silentLog } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import { loadPeerCred } from '../../native/peercred.js'
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js'
import { validateJwtSvid } from '../../spiffe/jwt-svid.js'
import {
  GrpcStatus,
  WorkloadEndpointError,
  WorkloadProtocolError,
  WorkloadStatusError,
} from './errors.js'
import {
  DEFAULT_PROC_ROOT,
  type ProcStamp,
  procStamp,
  procStampSync,
  stampMismatch,
} from './proc.js'
import {
  type JwtSvidMsg,
  workloadCodec,
  type X509SvidMsg,
  type X509SvidResponseMsg,
} from './proto.js'
import { SECURITY_HEADER, workloadServiceDefinition } from './service.js'
import { addSideServices } from './side-services.js'
import { secureSocketDir } from './socket-dir.js'
import {
  audienceProblem,
  type BundlesUpdate,
  type PeerInfo,
  type Selector,
  type WorkloadAttestor,
  type WorkloadSource,
  type X509Update,
} from './types.js'

export { SECURITY_HEADER }

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

export interface WorkloadApiServerOptions {
  readonly socketPath: string
  readonly source: WorkloadSource
  readonly attestors: readonly WorkloadAttestor[]
  readonly trustDomain: TrustDomain
  /** Default 0o777: any local user may ask; attestation decides what they get (like SPIRE). */
  readonly socketMode?: number
  readonly log?: Log
  /** Kernel credentials of a connected socket; default: the peercred addon's SO_PEERCRED. */
  readonly peerCred?: (fd: number) => PeerInfo
  /** Where /proc is (tests); default '/proc'. */
  readonly procRoot?: string
  /** Per-call attestation deadline, ms; default 10000. */
  readonly attestTimeoutMs?: number
  /** Serve bundles to callers without an identity (SPIRE's allow_unauthenticated_verifiers). */
  readonly allowUnauthenticatedVerifiers?: boolean
  /** Most concurrent streams per connection; default 1000. */
  readonly maxConcurrentStreams?: number
  /** Whether the agent itself is healthy (a valid agent SVID); default: always. */
  readonly ready?: () => boolean
}

export interface WorkloadApiServer extends AsyncDisposable {
  readonly socketPath: string
  /** Open client connections. */
  readonly connections: number
  close(): Promise<void>
}

interface Conn {
  readonly peer: PeerInfo
  readonly stamp: ProcStamp
  /** Our mirror of nghttp2's stream-reset token bucket for this connection. */
  resetTokens: number
  resetAt: number
  session?: Http2Session
  recycled: boolean
}

type AnyCall =
  | grpc.ServerUnaryCall<Uint8Array, Uint8Array>
  | grpc.ServerWritableStream<Uint8Array, Uint8Array>

const PERMISSION_DENIED = () =>
  new WorkloadStatusError(GrpcStatus.PERMISSION_DENIED, 'no identity issued')

function toBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(parts.map(toBuffer))
}

/** 'example.org' → 'spiffe://example.org' (tolerating keys that already carry the scheme). */
function tdKey(td: string): string {
  return td.startsWith('spiffe://') ? td : `spiffe://${td}`
}

function sortedRecord<V>(entries: Iterable<[string, V]>): Record<string, V> {
  const out: Record<string, V> = {}
  for (const [k, v] of [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) out[k] = v
  return out
}

/** Keeps the first of each non-empty hint: the spec makes hints unique within a response. */
function dedupeHints<T extends { readonly hint: string }>(items: readonly T[]): T[] {
  const seen = new Set<string>()
  return items.filter((i) => {
    if (i.hint === '') return true
    if (seen.has(i.hint)) return false
    seen.add(i.hint)
    return true
  })
}

function checkHeader(md: grpc.Metadata): void {
  const v = md.get(SECURITY_HEADER)
  if (v.length !== 1 || v[0] !== 'true') {
    throw new WorkloadStatusError(
      GrpcStatus.INVALID_ARGUMENT,
      'security header missing from request',
      `send the gRPC metadata ${SECURITY_HEADER}: true with every Workload API call`,
    )
  }
}

/** Rejects when `signal` aborts, whether or not the attestor honours it. */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}

/** Is something accepting connections on this socket path? */
function socketIsLive(path: string): Promise<boolean> {
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

async function prepareSocketPath(path: string): Promise<void> {
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

/** One shared abort reason: building a stack per closed stream is measurable in fetch loops. */
const STREAM_CLOSED = new Error('stream closed')

/** Per-stream bookkeeping: cancellation, the source subscriptions, full-state backpressure. */
class StreamState {
  closed = false
  readonly abort = new AbortController()
  private readonly unsubs: (() => void)[] = []
  private blocked = false
  private pending: Uint8Array | undefined
  private readonly call: grpc.ServerWritableStream<Uint8Array, Uint8Array>

  constructor(call: grpc.ServerWritableStream<Uint8Array, Uint8Array>, onCancel?: () => void) {
    this.call = call
    const close = () => this.close()
    call.on('cancelled', () => {
      onCancel?.()
      close()
    })
    call.on('close', close)
    call.on('finish', close)
  }

  /** Registers an unsubscribe; runs it at once when the stream closed meanwhile. */
  hold(unsub: () => void): void {
    if (this.closed) unsub()
    else this.unsubs.push(unsub)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.abort.abort(STREAM_CLOSED)
    for (const u of this.unsubs.splice(0)) {
      try {
        u()
      } catch {
        // An unsubscribe that throws must not keep the others from running.
      }
    }
  }

  /**
   * Sends a full-state message. Each message replaces the previous one, so while the client is
   * not reading only the newest is kept: a slow reader costs one message of memory, not a queue.
   */
  send(msg: Uint8Array): void {
    if (this.closed) return
    if (this.blocked) {
      this.pending = msg
      return
    }
    if (!this.call.write(toBuffer(msg))) {
      this.blocked = true
      this.call.once('drain', () => {
        this.blocked = false
        const p = this.pending
        this.pending = undefined
        if (p) this.send(p)
      })
    }
  }

  fail(err: WorkloadStatusError): void {
    if (this.closed) return
    this.close()
    this.call.emit('error', {
      code: err.status,
      details: err.message,
      metadata: new grpc.Metadata(),
    })
  }
}

export async function startWorkloadApi(opts: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
  const log = opts.log ?? silentLog
  const source = opts.source
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  const attestTimeoutMs = opts.attestTimeoutMs ?? 10_000
  const ownTd = opts.trustDomain.name
  // Resolved now, so a missing addon fails the start, not every caller.
  const peerCred = opts.peerCred ?? loadPeerCred().peerCred
  const conns = new Map<string, Conn>()
  const sockets = new Set<Socket>()
  let serving = true
  let nextConn = 0

  /** Counts a stream the client cancelled; recycles the connection before nghttp2 cuts it. */
  function noteReset(connId: string): void {
    const c = conns.get(connId)
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
    log('debug', 'recycling a workload connection before its stream-reset budget runs out', {
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

  function statusOf(err: unknown): WorkloadStatusError {
    if (err instanceof WorkloadStatusError) return err
    if (err instanceof WorkloadProtocolError) {
      return new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, err.message)
    }
    log('error', 'workload API handler failed', { error: (err as Error)?.message ?? String(err) })
    return new WorkloadStatusError(GrpcStatus.INTERNAL, 'internal error')
  }

  /** Runs every attestor on the caller, then checks the caller is still the same process. */
  async function attest(call: AnyCall, signal: AbortSignal): Promise<Selector[]> {
    const connId = call.getPeer()
    const conn = conns.get(connId)
    if (!conn) {
      throw new WorkloadStatusError(GrpcStatus.UNAUTHENTICATED, 'unknown caller connection')
    }
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(attestTimeoutMs)])
    const results = await Promise.allSettled(
      opts.attestors.map((a) => raceAbort(a.attest(conn.peer, deadline), deadline)),
    )
    if (signal.aborted) throw signal.reason
    const selectors: Selector[] = []
    let failures = 0
    results.forEach((r, i) => {
      const name = opts.attestors[i]!.name
      if (r.status === 'fulfilled') {
        // Typed with the plugin's name whatever the plugin said: one plugin cannot forge another's.
        for (const s of r.value) selectors.push({ type: name, value: s.value })
      } else {
        failures++
        log('warn', 'workload attestor failed', {
          attestor: name,
          pid: conn.peer.pid,
          error: (r.reason as Error)?.message ?? String(r.reason),
        })
      }
    })
    if (opts.attestors.length > 0 && failures === opts.attestors.length) {
      throw new WorkloadStatusError(GrpcStatus.UNAVAILABLE, 'workload attestation failed')
    }
    let now: ProcStamp
    try {
      now = await procStamp(conn.peer.pid, procRoot)
    } catch (err) {
      throw new WorkloadStatusError(
        GrpcStatus.UNAUTHENTICATED,
        `could not verify existence of the original caller: ${(err as Error).message}`,
      )
    }
    const why = stampMismatch(conn.stamp, now)
    if (why !== undefined) {
      throw new WorkloadStatusError(
        GrpcStatus.UNAUTHENTICATED,
        `could not verify existence of the original caller: ${why}`,
      )
    }
    log('debug', 'workload attested', { pid: conn.peer.pid, uid: conn.peer.uid, selectors })
    return selectors
  }

  function composeX509(u: X509Update): X509SvidResponseMsg {
    const svids: X509SvidMsg[] = []
    for (const s of dedupeHints(u.svids)) {
      let td: string
      try {
        td = SpiffeId.parse(s.spiffeId).trustDomain.name
      } catch {
        log('error', 'the cache holds an SVID with an invalid SPIFFE ID', { entry: s.entryId })
        continue
      }
      svids.push({
        spiffeId: s.spiffeId,
        x509Svid: concat(s.chain),
        x509SvidKey: s.privateKey,
        bundle: concat(u.bundles.get(td) ?? []),
        hint: s.hint,
      })
    }
    const federated = [...u.bundles]
      .filter(([td]) => td !== ownTd && tdKey(td) !== tdKey(ownTd))
      .map(([td, certs]): [string, Uint8Array] => [tdKey(td), concat(certs)])
    return { svids, crl: [], federatedBundles: sortedRecord(federated) }
  }

  /** Unary handler scaffolding: header, cancellation, status mapping. */
  function unary(
    fn: (
      call: grpc.ServerUnaryCall<Uint8Array, Uint8Array>,
      signal: AbortSignal,
    ) => Promise<Uint8Array>,
    needsHeader = true,
  ) {
    return (
      call: grpc.ServerUnaryCall<Uint8Array, Uint8Array>,
      callback: grpc.sendUnaryData<Uint8Array>,
    ) => {
      const ac = new AbortController()
      const peer = call.getPeer() // after a cancel, getPeer() no longer knows the socket
      call.on('cancelled', () => {
        noteReset(peer)
        ac.abort(new Error('call cancelled'))
      })
      Promise.resolve()
        .then(() => {
          if (needsHeader) checkHeader(call.metadata)
          return fn(call, ac.signal)
        })
        .then(
          (res) => {
            if (!ac.signal.aborted) callback(null, toBuffer(res))
          },
          (err: unknown) => {
            if (ac.signal.aborted) return // the caller left; nobody to answer
            const s = statusOf(err)
            callback({ code: s.status, details: s.message })
          },
        )
    }
  }

  /** Server-streaming scaffolding: header, attestation, then `subscribe` on a StreamState. */
  function streaming(
    requestName: string,
    subscribe: (s: StreamState, selectors: readonly Selector[]) => void,
  ) {
    return (call: grpc.ServerWritableStream<Uint8Array, Uint8Array>) => {
      const peer = call.getPeer() // after a cancel, getPeer() no longer knows the socket
      const s = new StreamState(call, () => noteReset(peer))
      Promise.resolve()
        .then(async () => {
          checkHeader(call.metadata)
          workloadCodec.empty.decode(requestName, call.request)
          const selectors = await attest(call, s.abort.signal)
          if (!s.closed) subscribe(s, selectors)
        })
        .catch((err: unknown) => {
          if (s.closed) return
          s.fail(statusOf(err))
        })
    }
  }

  /** Bundle streams: gated on the caller having an identity, identical messages skipped. */
  function bundleStream(
    requestName: string,
    encode: (u: BundlesUpdate) => Uint8Array,
  ): ReturnType<typeof streaming> {
    return streaming(requestName, (s, selectors) => {
      let entitled: boolean | undefined = opts.allowUnauthenticatedVerifiers ? true : undefined
      let latest: BundlesUpdate | undefined
      let last: Buffer | undefined
      const push = () => {
        if (entitled === undefined || latest === undefined) return
        if (!entitled) return s.fail(PERMISSION_DENIED())
        const msg = toBuffer(encode(latest))
        if (last?.equals(msg)) return
        last = msg
        s.send(msg)
      }
      if (!opts.allowUnauthenticatedVerifiers) {
        s.hold(
          source.subscribeX509(selectors, (u) => {
            entitled = u.svids.length > 0
            push()
          }),
        )
      }
      if (s.closed) return
      s.hold(
        source.subscribeBundles((u) => {
          latest = u
          push()
        }),
      )
    })
  }

  const workloadHandlers: grpc.UntypedServiceImplementation = {
    FetchX509SVID: streaming('X509SVIDRequest', (s, selectors) => {
      s.hold(
        source.subscribeX509(selectors, (u) => {
          if (s.closed) return
          const msg = composeX509(u)
          // No identity (or the last one was removed): the client must stop using its SVIDs.
          if (msg.svids.length === 0) return s.fail(PERMISSION_DENIED())
          s.send(workloadCodec.x509SvidResponse.encode(msg))
        }),
      )
    }),
    FetchX509Bundles: bundleStream('X509BundlesRequest', (u) =>
      workloadCodec.x509BundlesResponse.encode({
        crl: [],
        bundles: sortedRecord(
          [...u.x509].map(([td, certs]): [string, Uint8Array] => [tdKey(td), concat(certs)]),
        ),
      }),
    ),
    FetchJWTBundles: bundleStream('JWTBundlesRequest', (u) =>
      workloadCodec.jwtBundlesResponse.encode({
        bundles: sortedRecord(
          [...u.jwt].map(([td, jwks]): [string, Uint8Array] => [
            tdKey(td),
            new TextEncoder().encode(jwks),
          ]),
        ),
      }),
    ),
    FetchJWTSVID: unary(async (call, signal) => {
      const req = workloadCodec.jwtSvidRequest.decode(call.request)
      const bad = audienceProblem(req.audience)
      if (bad !== undefined) throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, bad)
      let wanted: string | undefined
      if (req.spiffeId !== '') {
        try {
          wanted = SpiffeId.parse(req.spiffeId).toString()
        } catch (err) {
          throw new WorkloadStatusError(
            GrpcStatus.INVALID_ARGUMENT,
            `invalid requested SPIFFE ID: ${(err as Error).message}`,
          )
        }
      }
      const selectors = await attest(call, signal)
      let results: Awaited<ReturnType<WorkloadSource['fetchJwtSvids']>>
      try {
        results = await source.fetchJwtSvids(selectors, req.audience, wanted)
      } catch (err) {
        if (err instanceof WorkloadStatusError) throw err
        // The code tells the workload whose fault it is (the agent's server, most often).
        const code = err instanceof SpiffeEdgeError ? ` [${err.code}]` : ''
        throw new WorkloadStatusError(
          GrpcStatus.UNAVAILABLE,
          `could not fetch JWT-SVID${code}: ${(err as Error).message}`,
        )
      }
      if (wanted !== undefined) results = results.filter((r) => r.spiffeId === wanted)
      if (results.length === 0) throw PERMISSION_DENIED()
      const svids: JwtSvidMsg[] = dedupeHints(results).map((r) => ({
        spiffeId: r.spiffeId,
        svid: r.token,
        hint: r.hint,
      }))
      return workloadCodec.jwtSvidResponse.encode({ svids })
    }),
    ValidateJWTSVID: unary(async (call) => {
      const req = workloadCodec.validateJwtSvidRequest.decode(call.request)
      if (req.audience === '') {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified')
      }
      if (req.svid === '') {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, 'svid must be specified')
      }
      let v: Awaited<ReturnType<typeof validateJwtSvid>>
      try {
        v = await validateJwtSvid(req.svid, {
          audience: req.audience,
          bundles: (td) => source.jwtBundle(td),
          now: new Date(),
        })
      } catch (err) {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, (err as Error).message)
      }
      let claims: Record<string, unknown> = { ...v.claims }
      // aud is always an array, as SPIRE returns it.
      if (typeof claims.aud === 'string') claims.aud = [claims.aud]
      if (!v.spiffeId.trustDomain.equals(opts.trustDomain)) {
        // Foreign tokens: only the claims the JWT-SVID spec defines (SPIRE's default filter).
        claims = { sub: claims.sub, aud: claims.aud, exp: claims.exp }
      }
      return workloadCodec.validateJwtSvidResponse.encode({
        spiffeId: v.spiffeId.toString(),
        claims,
      })
    }),
    FetchWITSVID: (call: grpc.ServerWritableStream<Uint8Array, Uint8Array>) => {
      const s = new StreamState(call)
      try {
        checkHeader(call.metadata)
        s.fail(
          new WorkloadStatusError(
            GrpcStatus.UNIMPLEMENTED,
            'fetching WIT-SVIDs is not implemented',
          ),
        )
      } catch (err) {
        s.fail(statusOf(err))
      }
    },
    FetchWITBundles: (call: grpc.ServerWritableStream<Uint8Array, Uint8Array>) => {
      const s = new StreamState(call)
      try {
        checkHeader(call.metadata)
        s.fail(
          new WorkloadStatusError(
            GrpcStatus.UNIMPLEMENTED,
            'fetching WIT bundles is not implemented',
          ),
        )
      } catch (err) {
        s.fail(statusOf(err))
      }
    },
  }

  const grpcServer = new grpc.Server({
    // Requests are tiny (the largest is a JWT to validate); bound what a caller can make us buffer.
    'grpc.max_receive_message_length': 1 << 20,
    'grpc.max_concurrent_streams': opts.maxConcurrentStreams ?? 1000,
  })
  grpcServer.addService(workloadServiceDefinition, workloadHandlers)
  // The endpoint answers from the local cache only, so "up" is what SERVING can mean here.
  const side = addSideServices(grpcServer, () => serving && (opts.ready?.() ?? true))
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure())
  // grpc-js keeps the HTTP/2 server it made for the injector in a private map; we only listen
  // to its sessions (to recycle them, see RESET_BUDGET). Without it, recycling is skipped.
  const h2servers = (grpcServer as unknown as { http2Servers?: Map<Http2Server, unknown> })
    .http2Servers
  if (h2servers instanceof Map) {
    for (const h of h2servers.keys()) {
      h.on('session', (session: Http2Session) => {
        const conn = conns.get(String(session.socket?.remoteAddress))
        if (conn) conn.session = session
      })
    }
  } else {
    log('warn', 'grpc-js internals changed: HTTP/2 connection recycling is off')
  }

  await prepareSocketPath(opts.socketPath)
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
    try {
      peer = peerCred(fd)
      if (!(peer.pid > 0)) throw new Error(`kernel reported pid ${peer.pid}`)
      stamp = procStampSync(peer.pid, procRoot)
    } catch (err) {
      // The caller is gone already, or we cannot identify it: nothing can be served.
      log('warn', 'dropping a workload connection we cannot identify', {
        error: (err as Error).message,
      })
      socket.destroy()
      return
    }
    const id = `conn-${++nextConn}-pid-${peer.pid}`
    conns.set(id, {
      peer,
      stamp,
      resetTokens: RESET_BUDGET.burst,
      resetAt: Date.now(),
      recycled: false,
    })
    sockets.add(socket)
    socket.once('close', () => {
      conns.delete(id)
      sockets.delete(socket)
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
  chmodSync(opts.socketPath, opts.socketMode ?? 0o777)
  const ino = statSync(opts.socketPath).ino
  log('info', 'Workload API listening', { socket: opts.socketPath })

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      serving = false
      side.stop()
      await new Promise<void>((resolve) => {
        net.close(() => resolve())
        for (const s of sockets) s.destroy()
      })
      injector.destroy()
      grpcServer.forceShutdown()
      try {
        // libuv unlinks the socket on close; only remove what is still ours if it did not.
        if (statSync(opts.socketPath).ino === ino) unlinkSync(opts.socketPath)
      } catch {
        // already gone
      }
      log('info', 'Workload API closed', { socket: opts.socketPath })
    })()
    return closing
  }
  return {
    socketPath: opts.socketPath,
    get connections() {
      return sockets.size
    },
    close,
    [Symbol.asyncDispose]: close,
  }
}
