/**
 * What every source shares: the typed events, ready() with a timeout, and close(). A source is
 * ready once each of its watches delivered one complete update; it stays ready through
 * reconnects (go-spiffe keeps serving the last good SVIDs while the agent is away).
 */
import { EventEmitter } from 'node:events'
import { SourceClosedError, SourceTimeoutError } from './errors.js'

export interface ReadyOptions {
  /** Give up after this many ms (ERR_SOURCE_TIMEOUT); default 10 000. */
  readonly timeoutMs?: number
}

export interface SourceEvents<T> {
  /** A new update was applied (every message the agent sends, after the first included). */
  update: [T]
  /** A watch failed; the source retries unless it then emits `close`. */
  error: [Error]
  close: []
}

export abstract class SourceBase<T> extends EventEmitter<SourceEvents<T>> {
  protected isClosed = false
  private lastError: Error | undefined
  private readyPromise: Promise<void> | undefined
  private markReady: (() => void) | undefined
  private failReady: ((err: Error) => void) | undefined
  private isReady = false

  protected readonly what: string

  constructor(what: string) {
    super()
    this.what = what
    this.readyPromise = new Promise<void>((resolve, reject) => {
      this.markReady = resolve
      this.failReady = reject
    })
    // Nobody may be awaiting yet: a rejection must not become an unhandled one.
    this.readyPromise.catch(() => {})
  }

  get closed(): boolean {
    return this.isClosed
  }

  /** Resolves once the source holds a complete update. */
  async ready(opts: ReadyOptions = {}): Promise<void> {
    if (this.isClosed) throw new SourceClosedError(this.what)
    if (this.isReady) return
    const ms = opts.timeoutMs ?? 10_000
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new SourceTimeoutError(this.what, ms, this.lastError)), ms)
    })
    try {
      await Promise.race([this.readyPromise, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  protected checkOpen(): void {
    if (this.isClosed) throw new SourceClosedError(this.what)
  }

  protected applied(value: T, complete: boolean): void {
    if (complete && !this.isReady) {
      this.isReady = true
      this.markReady?.()
    }
    if (complete) this.emit('update', value)
  }

  protected watchFailed(err: Error, fatal: boolean): void {
    this.lastError = err
    // EventEmitter throws on an unheard 'error'; a failed watch is routine (agent restart).
    if (this.listenerCount('error') > 0) this.emit('error', err)
    if (fatal) {
      this.failReady?.(err)
      this.close()
    }
  }

  /** Stops the watches and closes the connection; the source is unusable afterwards. */
  close(): void {
    if (this.isClosed) return
    this.isClosed = true
    this.stop()
    this.failReady?.(new SourceClosedError(this.what))
    this.emit('close')
  }

  protected abstract stop(): void
}
