/**
 * Per-stream state of the Workload API's server-streaming calls: cancellation, the source
 * subscriptions a stream holds, and full-state backpressure. Separate from the handlers because
 * its lifetime rules (close once, unsubscribe everything, keep only the newest message) are the
 * same for every stream and easiest to check on their own.
 */
import * as grpc from '@grpc/grpc-js'
import type { WorkloadStatusError } from './errors.js'

export function toBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

/** One shared abort reason: building a stack per closed stream is measurable in fetch loops. */
const STREAM_CLOSED = new Error('stream closed')

/** What the middleware needs of a caller's cancellation; an AbortSignal is one too. */
export interface CallSignal {
  readonly aborted: boolean
  readonly reason: unknown
  addEventListener(type: 'abort', fn: () => void, opts?: { once?: boolean }): void
  removeEventListener(type: 'abort', fn: () => void): void
}

/**
 * A call's cancellation: a flag, a reason and plain listeners. An AbortController per call
 * (its signal is an EventTarget; abort() builds an Event and dispatches it) was ~18 µs of every
 * FetchX509SVID in the profile, for listeners that nearly always had nothing left to do.
 * Listeners run once, in order, when abort() is first called.
 */
export class CallAbort implements CallSignal {
  aborted = false
  reason: unknown
  private fns: (() => void)[] | undefined

  /** AbortController's shape, so the same object serves as the signal. */
  get signal(): CallSignal {
    return this
  }

  addEventListener(_type: 'abort', fn: () => void): void {
    if (this.aborted) return
    this.fns ??= []
    this.fns.push(fn)
  }

  removeEventListener(_type: 'abort', fn: () => void): void {
    const i = this.fns?.indexOf(fn) ?? -1
    if (i >= 0) this.fns!.splice(i, 1)
  }

  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const fns = this.fns
    this.fns = undefined
    if (fns) for (const fn of fns) fn()
  }
}

/** Per-stream bookkeeping: cancellation, the source subscriptions, full-state backpressure. */
export class StreamState {
  closed = false
  readonly abort = new CallAbort()
  private readonly unsubs: (() => void)[] = []
  private blocked = false
  private pending: Uint8Array | undefined
  private readonly call: grpc.ServerWritableStream<Uint8Array, Uint8Array>

  constructor(call: grpc.ServerWritableStream<Uint8Array, Uint8Array>, onCancel?: () => void) {
    this.call = call
    const close = () => this.close()
    call.on('cancelled', () => {
      // grpc-js also reports 'cancelled' after a stream we ended ourselves (fail): only one
      // while the stream is open is the client's reset.
      if (!this.closed) onCancel?.()
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
