/**
 * How long the agent has been without its server: since the last successful sync (saved at most
 * once a minute, and at the first failed sync, so a restart during an outage still knows), for
 * health and the logs. And the
 * error a join-token agent gives once its SVID ran out offline: it needs a new token.
 */
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import type { AgentStorage } from '../storage.js'

/** The agent SVID ran out and this attestor cannot attest again by itself. */
export function svidExpiredError(id: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError(
    'ERR_AGENT_SVID_EXPIRED',
    `the agent SVID of ${id} expired while the server was unreachable, and a join-token agent cannot attest again by itself`,
    {
      cause,
      remedy:
        'generate a new join token (spiffe-edge server token generate) and restart the agent with --join-token; cached workload SVIDs are served until they expire',
    },
  )
}

export interface OfflineStatus {
  offline: boolean
  lastSyncOk?: string
  offlineSince?: string
  offlineSeconds?: number
}

const SAVE_EVERY_MS = 60_000

export class OfflineClock {
  /** When a sync last succeeded. */
  lastOk: number | undefined
  /** Since when the server has not answered (undefined while it does). */
  since: number | undefined
  private saved = 0
  private readonly storage: AgentStorage
  private readonly log: Log
  private readonly now: () => number

  constructor(storage: AgentStorage, log: Log, now: () => number) {
    this.storage = storage
    this.log = log
    this.now = now
  }

  /** After a restart: offline since the last contact before it, until the server answers. */
  restore(lastOk: number | undefined): void {
    if (lastOk === undefined) return
    this.lastOk = lastOk
    this.since = lastOk
  }

  ok(wasFailing: boolean): void {
    const now = this.now()
    if (wasFailing && this.since !== undefined) {
      this.log('info', 'the server answers again', {
        offline_seconds: Math.round((now - this.since) / 1000),
      })
    }
    this.lastOk = now
    this.since = undefined
    if (now - this.saved >= SAVE_EVERY_MS) {
      this.saved = now
      this.storage.save({ lastSyncOk: now })
    }
  }

  /**
   * A failed sync; returns the seconds offline so far, counted from the last successful sync.
   * The first failure saves that time, so a restart during the outage knows it exactly.
   */
  failed(): number {
    if (this.since === undefined) {
      this.since = this.lastOk ?? this.now()
      if (this.lastOk !== undefined && this.lastOk > this.saved) {
        this.saved = this.lastOk
        this.storage.save({ lastSyncOk: this.lastOk })
      }
    }
    return Math.round((this.now() - this.since) / 1000)
  }

  status(failures: number): OfflineStatus {
    const s: OfflineStatus = { offline: this.since !== undefined || (failures > 0 && !this.lastOk) }
    if (this.lastOk) s.lastSyncOk = new Date(this.lastOk).toISOString()
    if (this.since !== undefined) {
      s.offlineSince = new Date(this.since).toISOString()
      s.offlineSeconds = Math.max(0, Math.round((this.now() - this.since) / 1000))
    }
    return s
  }
}
