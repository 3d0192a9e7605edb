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

/** Per-stream bookkeeping: cancellation, the source subscriptions, full-state backpressure. */
export class StreamState {
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
