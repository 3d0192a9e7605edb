/**
 * One Workload API watch stream kept open: reconnects with capped exponential backoff (with
 * jitter, reset by every good message) until closed; InvalidArgument is final, as in go-spiffe
 * (the agent says the request itself is wrong, so retrying cannot help).
 */
import {
  GrpcStatus,
  type RawWorkloadClient,
  type StreamHandle,
  WorkloadApiError,
} from './workload/client.js'

export interface BackoffOptions {
  /** First retry delay in ms; default 100. */
  readonly initialMs?: number
  /** Largest retry delay in ms; default 5000. */
  readonly maxMs?: number
}

type Method = 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles'

export class StreamWatch {
  private handle: StreamHandle | undefined
  private timer: NodeJS.Timeout | undefined
  private attempt = 0
  private closed = false
  private readonly initialMs: number
  private readonly maxMs: number

  private readonly client: RawWorkloadClient
  private readonly method: Method
  /** Parses and applies a message; throwing counts as a stream failure. */
  private readonly onMessage: (b: Uint8Array) => void
  /** Every failure (the watch goes on unless `fatal`). */
  private readonly onError: (err: Error, fatal: boolean) => void

  constructor(
    client: RawWorkloadClient,
    method: Method,
    onMessage: (b: Uint8Array) => void,
    onError: (err: Error, fatal: boolean) => void,
    backoff: BackoffOptions = {},
  ) {
    this.client = client
    this.method = method
    this.onMessage = onMessage
    this.onError = onError
    this.initialMs = Math.max(1, backoff.initialMs ?? 100)
    this.maxMs = Math.max(this.initialMs, backoff.maxMs ?? 5000)
  }

  start(): void {
    if (this.closed) return
    this.timer = undefined
    this.handle = this.client.stream(
      this.method,
      (b) => {
        try {
          this.onMessage(b)
          this.attempt = 0
        } catch (err) {
          // A message we cannot use: drop the stream and try again later rather than keep
          // serving from a half-applied update.
          this.handle?.cancel()
          this.failed(err instanceof Error ? err : new Error(String(err)))
        }
      },
      (err) => this.failed(err),
    )
  }

  private failed(err: Error): void {
    if (this.closed) return
    this.handle = undefined
    const fatal = err instanceof WorkloadApiError && err.status === GrpcStatus.INVALID_ARGUMENT
    this.onError(err, fatal)
    if (fatal) {
      this.close()
      return
    }
    const base = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 20))
    this.attempt++
    // ±20% so many workloads behind one restarted agent do not reconnect in lockstep.
    const delay = Math.round(base * (0.8 + Math.random() * 0.4))
    this.timer = setTimeout(() => this.start(), delay)
    this.timer.unref?.()
  }

  close(): void {
    this.closed = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.handle?.cancel()
    this.handle = undefined
  }
}
