/**
 * What runs around every Workload API handler: the security header check, caller attestation
 * (all attestors on the connection's SO_PEERCRED pid) with the liveness re-check that the caller
 * is still the process that connected, status mapping, and the unary/streaming call scaffolding.
 * Separate from the handlers so that no handler can skip a check: handlers only receive
 * selectors that came through here.
 */
import type * as grpc from '@grpc/grpc-js'
import type { Log } from '../../common/log.js'
import type { Conn, ConnTable } from './endpoint.js'
import { GrpcStatus, WorkloadProtocolError, WorkloadStatusError } from './errors.js'
import { type ProcStamp, procStampSync, stampMismatch } from './proc.js'
import { workloadCodec } from './proto.js'
import { SECURITY_HEADER } from './service.js'
import { CallAbort, type CallSignal, StreamState, toBuffer } from './stream-state.js'
import type { Selector, WorkloadAttestor } from './types.js'

type AnyCall =
  | grpc.ServerUnaryCall<Uint8Array, Uint8Array>
  | grpc.ServerWritableStream<Uint8Array, Uint8Array>

/** One shared reason: an Error (with its stack) per cancelled call is measurable. */
const CALL_CANCELLED = new Error('call cancelled')

export function checkHeader(md: grpc.Metadata): void {
  const v = md.get(SECURITY_HEADER)
  if (v.length !== 1 || v[0] !== 'true') {
    throw new WorkloadStatusError(
      GrpcStatus.INVALID_ARGUMENT,
      'security header missing from request',
      `send the gRPC metadata ${SECURITY_HEADER}: true with every Workload API call`,
    )
  }
}

/**
 * Rejects when the batch is cut (deadline, or every caller left), whether or not the attestor
 * honours its signal. The batch keeps the rejecters and runs them from its one cut listener,
 * instead of adding and removing a listener per attestor: the profile showed event-target
 * bookkeeping as a share of every call.
 */
function raceAbort<T>(p: Promise<T>, batch: Batch): Promise<T> {
  const cut = batch.cut
  if (cut.aborted) return Promise.reject(cut.reason)
  return new Promise<T>((resolve, reject) => {
    batch.onAbort.push(() => reject(cut.reason))
    p.then(resolve, reject)
  })
}

interface Waiter {
  readonly resolve: (s: Selector[]) => void
  readonly reject: (e: unknown) => void
  /** Detaches from the caller's signal, then runs `fn` unless the caller left meanwhile. */
  readonly settle: (fn: () => void) => void
}

/** Calls of one connection waiting for the same attestation. */
interface Batch {
  readonly waiters: Set<Waiter>
  /**
   * The attestation's one cancellation: cut when every waiter has left (`left` set), or by the
   * deadline. One per batch, not per call or per purpose, and a plain flag: creating and
   * listening to abort signals was a measurable share of each call in the profile.
   */
  readonly cut: CallAbort
  /** The AbortSignal for attestors that read one, made only for them, aborted with `cut`. */
  ac: AbortController | undefined
  left: boolean
  /** Rejecters of the attestors' races (see raceAbort). */
  readonly onAbort: (() => void)[]
  /** When the attestation times out (performance.now() ms), once started. */
  deadline: number
}

export interface MiddlewareOptions {
  readonly conns: ConnTable
  readonly attestors: readonly WorkloadAttestor[]
  readonly procRoot: string
  readonly attestTimeoutMs: number
  readonly log: Log
}

export interface Middleware {
  /** Maps any error to the status a caller may see; unexpected ones are logged as INTERNAL. */
  statusOf(err: unknown): WorkloadStatusError
  /** Runs every attestor on the caller, then checks the caller is still the same process. */
  attest(call: AnyCall, signal: CallSignal): Promise<Selector[]>
  /** Unary handler scaffolding: header, cancellation, status mapping. */
  unary(
    fn: (
      call: grpc.ServerUnaryCall<Uint8Array, Uint8Array>,
      signal: CallSignal,
    ) => Promise<Uint8Array>,
    needsHeader?: boolean,
  ): grpc.handleUnaryCall<Uint8Array, Uint8Array>
  /** Server-streaming scaffolding: header, attestation, then `subscribe` on a StreamState. */
  streaming(
    requestName: string,
    subscribe: (s: StreamState, selectors: readonly Selector[]) => void,
  ): grpc.handleServerStreamingCall<Uint8Array, Uint8Array>
}

export function middleware(opts: MiddlewareOptions): Middleware {
  const { conns, log } = opts

  function statusOf(err: unknown): WorkloadStatusError {
    if (err instanceof WorkloadStatusError) return err
    if (err instanceof WorkloadProtocolError) {
      return new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, err.message)
    }
    log('error', 'workload API handler failed', { error: (err as Error)?.message ?? String(err) })
    return new WorkloadStatusError(GrpcStatus.INTERNAL, 'internal error')
  }

  /**
   * Calls on one connection that arrive together share one attestation: a batch opens with the
   * first call and closes (is removed from `batches`) right before its attestation starts, so
   * every call it serves arrived before any of the caller's state was read. That is the same
   * freshness each call would get alone; a call arriving once the attestation has begun opens a
   * new batch. (1,000 streams opened at once over 20 connections ran 1,000 attestations of the
   * same 20 callers.) A connection's first batch in a turn of the event loop starts at once (a
   * lone call waits for nothing); further calls in that turn wait for the turn's end, together.
   */
  const batches = new Map<string, Batch>()

  /**
   * Attestations running, and one timer that aborts those past their deadline: a setTimeout and
   * clearTimeout per attestation (timer-list insert and removal) showed in every call's profile.
   * The sweep runs a few times per deadline, so a stuck attestor is cut off within 25% of it.
   */
  const running = new Set<Batch>()
  let sweeper: NodeJS.Timeout | undefined
  const sweepEvery = Math.max(5, Math.min(1000, opts.attestTimeoutMs / 4))
  function watchDeadline(b: Batch): void {
    b.deadline = performance.now() + opts.attestTimeoutMs
    running.add(b)
    if (sweeper) return
    sweeper = setInterval(() => {
      const now = performance.now()
      for (const r of running) {
        if (r.deadline > now) continue
        running.delete(r)
        r.cut.abort(new DOMException('workload attestation timed out', 'TimeoutError'))
      }
      if (running.size === 0) {
        clearInterval(sweeper)
        sweeper = undefined
      }
    }, sweepEvery)
    // Not unref'd: it runs only while an attestation does, and stops when none is left.
  }
  /** Connections that started an attestation in this turn of the event loop. */
  const busy = new Set<string>()

  function attest(call: AnyCall, signal: CallSignal): Promise<Selector[]> {
    const peer = call.getPeer()
    const conn = conns.get(peer)
    if (!conn) {
      return Promise.reject(
        new WorkloadStatusError(GrpcStatus.UNAUTHENTICATED, 'unknown caller connection'),
      )
    }
    if (signal.aborted) return Promise.reject(signal.reason)
    let batch = batches.get(peer)
    if (!batch) {
      const b: Batch = {
        waiters: new Set(),
        cut: new CallAbort(),
        ac: undefined,
        left: false,
        onAbort: [],
        deadline: Number.POSITIVE_INFINITY,
      }
      b.cut.addEventListener('abort', () => {
        b.ac?.abort(b.cut.reason)
        for (const r of b.onAbort.splice(0)) r()
      })
      batches.set(peer, b)
      const start = () => {
        if (batches.get(peer) === b) batches.delete(peer)
        if (b.left) return // every caller left before it started: nothing to attest for
        if (!busy.has(peer)) {
          busy.add(peer)
          setImmediate(() => busy.delete(peer))
        }
        attestNow(conn, b).then(
          (sel) => {
            for (const w of b.waiters) w.settle(() => w.resolve([...sel]))
          },
          (err: unknown) => {
            for (const w of b.waiters) w.settle(() => w.reject(err))
          },
        )
      }
      // A microtask still lets calls parsed in this same callback join. (A resolved promise, not
      // queueMicrotask: that one wraps every callback in an AsyncResource.)
      if (busy.has(peer)) setImmediate(start)
      else void Promise.resolve().then(start)
      batch = b
    }
    const b = batch
    return new Promise<Selector[]>((resolve, reject) => {
      // Not removed when settled (a flag instead): removing listeners cost more than the
      // attestation's own work per call; the caller's signal ends with its call.
      let settled = false
      const onAbort = () => {
        if (settled) return
        settled = true
        b.waiters.delete(w)
        reject(signal.reason)
        // Nobody left waiting: let the attestors stop too.
        if (b.waiters.size === 0) {
          b.left = true
          b.cut.abort(signal.reason)
          // Not started yet: a call arriving now must not join an abandoned attestation.
          if (batches.get(peer) === b) batches.delete(peer)
        }
      }
      const w: Waiter = {
        resolve,
        reject,
        settle: (fn) => {
          if (settled) return
          settled = true
          if (signal.aborted) reject(signal.reason)
          else fn()
        },
      }
      b.waiters.add(w)
      signal.addEventListener('abort', onAbort)
    })
  }

  /** Runs every attestor on the caller, then checks the caller is still the same process. */
  async function attestNow(conn: Conn, batch: Batch): Promise<Selector[]> {
    const cut = batch.cut
    let results: PromiseSettledResult<Selector[]>[]
    watchDeadline(batch)
    // After every call of the batch arrived: status read from here on may serve the stamp.
    const since = conn.peer.proc?.beginAttestation()
    try {
      if (batch.left) throw cut.reason
      results = await Promise.allSettled(
        opts.attestors.map((a) => {
          let signal: AbortSignal | undefined
          if (!a.ignoresSignal) {
            if (!batch.ac) {
              batch.ac = new AbortController()
              if (cut.aborted) batch.ac.abort(cut.reason)
            }
            signal = batch.ac.signal
          }
          return raceAbort(a.attest(conn.peer, signal), batch)
        }),
      )
    } finally {
      running.delete(batch)
    }
    // Everyone left: nobody to answer (a timeout instead is the attestors' failure, below).
    if (batch.left) throw cut.reason
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
    // Liveness: the pid must still be the process (start time, owner, executable) that connected.
    let now: ProcStamp
    try {
      // Synchronous: /proc look-ups from kernel memory; the async ones cost a libuv pool round
      // trip each, several times the work.
      // The start time is read through the files opened at connect, which fail once the
      // process that connected is gone (whoever has its pid now). The ids come from the unix
      // attestor's status read in this attestation when it made one (`since`).
      now = procStampSync(conn.peer.pid, opts.procRoot, conn.peer.proc, since)
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

  const unary: Middleware['unary'] =
    (fn, needsHeader = true) =>
    (call, callback) => {
      const ac = new CallAbort()
      let answered = false
      const peer = call.getPeer() // after a cancel, getPeer() no longer knows the socket
      call.on('cancelled', () => {
        // grpc-js (1.14) reports 'cancelled' after every unary call it finished as well: only
        // one before our answer is the client's. (Counting the others as stream resets recycled
        // a connection making FetchJWTSVID calls every ~800 calls.)
        if (answered) return
        conns.noteReset(peer)
        ac.abort(CALL_CANCELLED)
      })
      Promise.resolve()
        .then(() => {
          if (needsHeader) checkHeader(call.metadata)
          return fn(call, ac)
        })
        .then(
          (res) => {
            if (ac.aborted) return
            answered = true
            callback(null, toBuffer(res))
          },
          (err: unknown) => {
            if (ac.aborted) return // the caller left; nobody to answer
            answered = true
            const s = statusOf(err)
            callback({ code: s.status, details: s.message })
          },
        )
    }

  const streaming: Middleware['streaming'] = (requestName, subscribe) => (call) => {
    const peer = call.getPeer() // after a cancel, getPeer() no longer knows the socket
    const s = new StreamState(call, () => conns.noteReset(peer))
    Promise.resolve()
      .then(async () => {
        checkHeader(call.metadata)
        workloadCodec.empty.decode(requestName, call.request)
        const selectors = await attest(call, s.abort)
        if (!s.closed) subscribe(s, selectors)
      })
      .catch((err: unknown) => {
        if (s.closed) return
        s.fail(statusOf(err))
      })
  }

  return { statusOf, attest, unary, streaming }
}
