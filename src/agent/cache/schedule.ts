/**
 * When the sync loop runs next: the sync interval after a success, capped exponential backoff with
 * jitter after a failure, but never later than the next SVID rotation, and once the agent SVID is
 * due and renewal keeps failing, at a quarter of its remaining life.
 */
import type { AgentIdentity } from './identity.js'

export interface ScheduleDeps {
  readonly intervalMs: number
  readonly now: () => number
  readonly random: () => number
  /** Runs one sync; rejects when it failed. */
  readonly sync: () => Promise<void>
  /** Consecutive failed syncs so far. */
  readonly failures: () => number
  readonly agent: () => AgentIdentity | undefined
  /** The soonest workload SVID rotation still ahead. */
  readonly nextRotation: (now: number) => number | undefined
  /** The soonest expiry among workload SVIDs already due (renewal failing: the server is away). */
  readonly overdueExpiry: (now: number) => number | undefined
}

/** While something is overdue, the server is probed at least this often, so a return is seen. */
export const OUTAGE_PROBE_MAX_MS = 5000

export class SyncSchedule {
  private readonly d: ScheduleDeps
  private timer: NodeJS.Timeout | undefined
  private stopped = false

  constructor(d: ScheduleDeps) {
    this.d = d
  }

  start(): void {
    this.schedule(this.nextDelay(this.d.intervalMs))
  }

  stop(): void {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
  }

  private schedule(ms: number): void {
    if (this.stopped) return
    const interval = this.d.intervalMs
    this.timer = setTimeout(() => {
      void this.d.sync().then(
        () => this.schedule(this.nextDelay(interval)),
        () => {
          // Capped exponential backoff with jitter: min(8 min, 48 × interval), as SPIRE caps it.
          const cap = Math.min(8 * 60_000, 48 * interval)
          const delay = Math.min(cap, interval * 2 ** Math.min(this.d.failures(), 10))
          this.schedule(this.nextDelay(delay / 2 + this.d.random() * (delay / 2)))
        },
      )
    }, ms)
    this.timer.unref?.()
  }

  /**
   * `base` (the interval, or the backoff), but no later than the next SVID rotation, so a
   * short-lived SVID (clamped to the end of its CA) is not left to expire between syncs. Once the
   * agent SVID is due and renewal keeps failing, retry at a quarter of its remaining life (at most
   * twice a second): backoff must not outlast it. The same for workload SVIDs past their
   * rotation, and while anything is overdue (even expired) the server is probed at least every
   * OUTAGE_PROBE_MAX_MS, so rotation resumes soon after it returns rather than after a backoff.
   */
  private nextDelay(base: number): number {
    const now = this.d.now()
    let d = base
    // Already expired: nothing left to beat, so probe at the outage rate, not twice a second.
    const probe = (expiry: number) =>
      expiry <= now
        ? OUTAGE_PROBE_MAX_MS
        : Math.min(OUTAGE_PROBE_MAX_MS, Math.max(500, (expiry - now) / 4))
    const a = this.d.agent()
    if (a) {
      if (a.rotateAt > now) d = Math.min(d, a.rotateAt - now)
      else d = Math.min(d, probe(a.notAfter))
    }
    const next = this.d.nextRotation(now)
    if (next !== undefined) d = Math.min(d, next - now)
    const overdue = this.d.overdueExpiry(now)
    if (overdue !== undefined) d = Math.min(d, probe(overdue))
    return Math.max(50, d)
  }
}
