/**
 * The machinery under TpmContext: one ESYS context, a queue so one command is in flight at a
 * time, retries of retryable codes, reopening after the TPM went away, health, and the ownership
 * of every KeyHandle (each is stamped with the context generation it was loaded in).
 */
import type { SpiffeEdgeError } from '../errors.js'
import { loadNative } from '../native/load.js'
import type { NativeBinding, NativeEsysContext } from '../native/types.js'
import { observed } from './command-observer.js'
import { fromNative, TpmClosedError, TpmError } from './errors.js'
import { KeyHandle } from './key-handle.js'
import type { TpmPublic } from './structures/public.js'

export interface OpenOptions {
  /** Injected binding (tests, or an embedding that loads the addon itself). */
  readonly native?: NativeBinding
  /** How often a retryable response code (RETRY, YIELDED, TESTING) is retried. */
  readonly retries?: number
  /** Reconnect backoff after the TPM connection broke: first delay and cap, ms (100, 5000). */
  readonly reconnectMinMs?: number
  readonly reconnectMaxMs?: number
}

/** What the agent's health reports about its TPM. */
export interface TpmHealth {
  readonly healthy: boolean
  readonly tcti: string
  /** How often the context was reopened after the TPM went away. */
  readonly reconnects: number
  /** While unhealthy: the failure that broke the connection (and the last reopen failure). */
  readonly error?: { readonly code: string; readonly rc: number; readonly message: string }
  /** While unhealthy: when it broke (ms since the epoch). */
  readonly downSince?: number
}

/** TSS2_ESYS_RC_BAD_SEQUENCE: ESAPI is mid-command (its TPM went away during one). */
const ESYS_BAD_SEQUENCE = 0x70007
/** TPM_RC_INITIALIZE: the TPM restarted and wants TPM2_Startup. */
const RC_INITIALIZE = 0x100

/**
 * Failures after which this ESYS context is useless and must be reopened: the TCTI lost the TPM
 * (swtpm restarted, device reset), ESAPI is stuck mid-sequence, or the TPM was reset under us.
 */
export function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof TpmError)) return false
  if (err.layer === 10) return true
  if (err.rc === ESYS_BAD_SEQUENCE) return true
  return err.layer === 0 && (err.rc & 0xfff) === RC_INITIALIZE
}

export class TpmConnection {
  private queue: Promise<unknown> = Promise.resolve()
  private closed = false
  private ctx: NativeEsysContext
  private readonly native: NativeBinding
  private readonly retries: number
  private readonly reconnectMinMs: number
  private readonly reconnectMaxMs: number
  /** Bumped at every reopen: handles of an older generation name nothing in the new context. */
  private generationNo = 0
  private readonly handleGeneration = new WeakMap<KeyHandle, number>()
  /** Set while the connection is broken: the failure, when, and when to try reopening next. */
  private down: { error: TpmError; since: number; retryAt: number; delayMs: number } | undefined
  private reconnects = 0
  readonly tcti: string

  private constructor(
    ctx: NativeEsysContext,
    native: NativeBinding,
    tcti: string,
    options: OpenOptions,
  ) {
    this.ctx = ctx
    this.native = native
    this.tcti = tcti
    this.retries = options.retries ?? 5
    this.reconnectMinMs = options.reconnectMinMs ?? 100
    this.reconnectMaxMs = options.reconnectMaxMs ?? 5000
  }

  static async open(tcti: string, options: OpenOptions = {}): Promise<TpmConnection> {
    const native = options.native ?? loadNative()
    try {
      const ctx = await native.openContext(tcti)
      return new TpmConnection(ctx, native, tcti, options)
    } catch (err) {
      throw fromNative(err)
    }
  }

  /** The current context generation (a session started in an older one is gone). */
  get generation(): number {
    return this.generationNo
  }

  /** Whether the TPM answered the last command; while not, the failure that broke it. */
  health(): TpmHealth {
    const d = this.down
    if (!d) return { healthy: true, tcti: this.tcti, reconnects: this.reconnects }
    return {
      healthy: false,
      tcti: this.tcti,
      reconnects: this.reconnects,
      error: { code: d.error.code, rc: d.error.rc, message: d.error.message },
      downSince: d.since,
    }
  }

  private markDown(error: TpmError): void {
    const now = Date.now()
    // The first reopen is tried at once (a restarted swtpm is usually back already).
    this.down = this.down
      ? { ...this.down, error }
      : { error, since: now, retryAt: now, delayMs: this.reconnectMinMs }
  }

  /**
   * Reopens the ESYS context after a connection failure, at most once per backoff delay (doubling
   * to reconnectMaxMs): a dead TPM costs callers one fast error each, not a reconnect storm.
   * A TPM that restarted without TPM2_Startup gets one. Keys are not cached across this: every
   * signing key is reloaded from its blob (see keymanager/tpm.ts), so nothing else is needed.
   */
  private async reopen(): Promise<void> {
    const d = this.down!
    const now = Date.now()
    if (now < d.retryAt) throw unavailable(d.error, d.retryAt - now)
    d.retryAt = now + d.delayMs
    d.delayMs = Math.min(d.delayMs * 2, this.reconnectMaxMs)
    try {
      this.ctx.close()
    } catch {
      // Closing a context whose TPM is gone may fail: it is being replaced anyway.
    }
    this.generationNo++
    try {
      this.ctx = await this.native.openContext(this.tcti)
      try {
        await this.ctx.getRandom(1)
      } catch (raw) {
        const e = fromNative(raw)
        if (!(e instanceof TpmError && e.layer === 0 && (e.rc & 0xfff) === RC_INITIALIZE)) throw e
        await this.ctx.startup()
      }
    } catch (raw) {
      const e = fromNative(raw)
      if (e instanceof TpmError) d.error = e
      throw unavailable(d.error, d.retryAt - Date.now())
    }
    this.down = undefined
    this.reconnects++
  }

  /** Runs one native call after the ones before it, retrying retryable TPM codes. */
  run<T>(
    call: (ctx: NativeEsysContext) => Promise<T>,
    uses: readonly KeyHandle[] = [],
  ): Promise<T> {
    const next = this.queue.then(async () => {
      if (this.closed) {
        throw new TpmClosedError(
          'the TPM context is closed',
          'open a new TpmContext; this one was closed',
        )
      }
      if (this.down) await this.reopen()
      // Checked here, after any reopen: a handle number from the old context must never reach the new one.
      for (const h of uses) this.handleFor(h)
      for (let attempt = 0; ; attempt++) {
        try {
          return await call(observed(this.ctx))
        } catch (raw) {
          const err = fromNative(raw)
          if (err instanceof TpmError && err.retryable && attempt < this.retries) {
            await new Promise((r) => setTimeout(r, 10 * 2 ** attempt))
            continue
          }
          if (err instanceof TpmError && isConnectionFailure(err)) this.markDown(err)
          throw err
        }
      }
    })
    // Keep the chain alive whatever this call did.
    this.queue = next.catch(() => undefined)
    return next
  }

  /** The ESYS handle behind a KeyHandle, refusing a disposed one or one from before a reopen. */
  handleFor(handle: KeyHandle): number {
    if (handle.disposed) {
      throw new TpmClosedError(
        'this key handle was already disposed',
        'load the key again; a disposed handle is flushed from the TPM',
      )
    }
    if (this.handleGeneration.get(handle) !== this.generationNo) throw staleHandle()
    return handle.handle
  }

  /** Throws when the context was reopened since `gen` (its handles and sessions are gone). */
  checkGeneration(gen: number): void {
    if (gen !== this.generationNo) throw staleHandle()
  }

  /** The one place a KeyHandle is made: owned by this connection, stamped with its generation. */
  adopt(handle: number, pub: TpmPublic, name: Uint8Array, persistent: boolean): KeyHandle {
    const h = new KeyHandle(handle, pub, name, persistent, this.releaseHandle)
    this.handleGeneration.set(h, this.generationNo)
    return h
  }

  /** Whether a handle still names a loaded object of the current context. */
  isCurrent(h: KeyHandle): boolean {
    return !h.disposed && this.handleGeneration.get(h) === this.generationNo
  }

  /**
   * A second reference to a loaded handle, stamped with the same generation, whose disposal runs
   * `release` instead of flushing: for a handle several owners share (the SRK, context.ts).
   */
  borrow(h: KeyHandle, release: () => Promise<void>): KeyHandle {
    const b = new KeyHandle(h.handle, h.public, h.name, h.persistent, release)
    const gen = this.handleGeneration.get(h)
    if (gen !== undefined) this.handleGeneration.set(b, gen)
    return b
  }

  private readonly releaseHandle = async (h: KeyHandle): Promise<void> => {
    if (this.closed) return // close() flushed everything already
    // Loaded before a reopen, or the TPM is unreachable: the TPM that held it is gone (a reopen
    // finalizes the old context), and releasing must not throw over the error that got us here.
    if (this.down || this.handleGeneration.get(h) !== this.generationNo) return
    const gen = this.generationNo
    try {
      await this.run(async (c): Promise<void> => {
        if (gen !== this.generationNo) return
        if (h.persistent) await c.trClose(h.handle)
        else await c.flushContext(h.handle)
      })
    } catch (err) {
      if (!this.down) throw err
    }
  }

  /** Flushes a session started in generation `gen`; as releaseHandle, one of a lost context is gone with it. */
  async flushSession(session: number, gen: number): Promise<void> {
    if (this.down || gen !== this.generationNo) return
    await this.run(async (c) =>
      gen === this.generationNo ? c.flushContext(session) : { flushed: 0 },
    ).catch((err) => {
      if (!this.down) throw err
    })
  }

  /** Closes the context after queued calls finish. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.queue
    this.closed = true
    // The addon flushes every transient this context still holds before finalizing.
    try {
      this.ctx.close()
    } catch (raw) {
      throw fromNative(raw)
    }
  }
}

function staleHandle(): SpiffeEdgeError {
  return new TpmClosedError(
    'this handle is from before a TPM reconnect',
    'load the key again from its blob; the TPM restarted and forgot it',
  )
}

/** The error callers get while the TPM is unreachable: a TPM code (the cause), never a server one. */
function unavailable(cause: TpmError, retryInMs: number): TpmError {
  return new TpmError(
    `the TPM at this TCTI is unreachable (reconnecting; next try in ${Math.max(0, retryInMs)} ms): ${cause.message}`,
    cause.rc,
    cause.decoded,
    cause,
  )
}
