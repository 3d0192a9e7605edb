import { SpiffeEdgeError } from '../errors.js'
import { loadNative } from '../native/load.js'
import type { NativeBinding, NativeEsysContext } from '../native/types.js'
import { TPM_CAP, TPM_PT, TPM_RH } from './constants.js'
import { fromNative, TpmError, TpmStructureError } from './errors.js'
import { marshalDigestList, policyOrDigest, policySecretDigest } from './policy.js'
import { parseHandles, parseTpmProperties, propertyString } from './structures/capability.js'
import { type NvPublic, parseTpm2bNvPublic, TPMA_NV } from './structures/nv.js'
import {
  marshalPcrSelection,
  type PcrSelection,
  type PcrValues,
  parsePcrSelection,
} from './structures/pcr.js'
import {
  marshalTpm2bPublic,
  type PublicTemplate,
  parseTpm2bPublic,
  type TpmPublic,
} from './structures/public.js'
import { Reader } from './structures/reader.js'
import { EK_POLICY_C } from './templates.js'

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

export interface FixedProperties {
  /** The four-character vendor id, e.g. "IBM", "INTC", "STM". */
  readonly manufacturer: string
  readonly manufacturerId: number
  /** VENDOR_STRING_1..4 joined: the chip's own model text. */
  readonly vendorString: string
  /** FIRMWARE_VERSION_1 and _2 as the TPM reports them. */
  readonly firmwareVersion1: number
  readonly firmwareVersion2: number
  /** Dotted form: four 16-bit halves, major first (how vendors publish versions). */
  readonly firmwareVersion: string
  readonly specFamily: string
  readonly specLevel: number
  readonly specRevision: number
  readonly nvBufferMax: number
}

/** A key's wrapped private part and public area: safe to store, usable only in this TPM. */
export interface KeyBlob {
  /** Marshaled TPM2B_PRIVATE. */
  readonly private: Uint8Array
  /** Marshaled TPM2B_PUBLIC. */
  readonly public: Uint8Array
}

/**
 * A loaded object with one owner. Disposing it flushes a transient object, or closes the ESYS
 * reference to a persistent one (which stays in the TPM). swtpm has no resource manager, so a
 * leaked transient costs one of its ~3 object slots: use `await using`.
 */
export class KeyHandle implements AsyncDisposable {
  readonly handle: number
  readonly public: TpmPublic
  readonly name: Uint8Array
  readonly persistent: boolean
  private released = false
  private readonly release: (h: KeyHandle) => Promise<void>

  constructor(
    handle: number,
    pub: TpmPublic,
    name: Uint8Array,
    persistent: boolean,
    release: (h: KeyHandle) => Promise<void>,
  ) {
    this.handle = handle
    this.public = pub
    this.name = name
    this.persistent = persistent
    this.release = release
  }

  get disposed(): boolean {
    return this.released
  }

  async dispose(): Promise<void> {
    if (this.released) return
    this.released = true
    await this.release(this)
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose()
  }
}

export interface Attestation {
  /** TPMS_ATTEST, the bytes the signature covers. */
  readonly message: Uint8Array
  /** Marshaled TPMT_SIGNATURE. */
  readonly signature: Uint8Array
}

export interface PublicArea {
  readonly public: TpmPublic
  /** The marshaled TPM2B_PUBLIC as the TPM returned it. */
  readonly raw: Uint8Array
  readonly name: Uint8Array
}

/**
 * One open TPM. Calls are queued (ESAPI runs one command at a time per context), each runs on
 * the libuv thread pool so the event loop never waits on the TPM, and retryable response codes are
 * retried. `close()` (or `await using`) ends it; calls after that fail with ERR_TPM_CLOSED.
 */
export class TpmContext implements AsyncDisposable {
  private queue: Promise<unknown> = Promise.resolve()
  private closed = false
  private ctx: NativeEsysContext
  private readonly native: NativeBinding
  private readonly retries: number
  private readonly reconnectMinMs: number
  private readonly reconnectMaxMs: number
  private nvBufferMax: number | undefined
  /** Bumped at every reopen: handles of an older generation name nothing in the new context. */
  private generation = 0
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

  static async open(tcti: string, options: OpenOptions = {}): Promise<TpmContext> {
    const native = options.native ?? loadNative()
    try {
      const ctx = await native.openContext(tcti)
      return new TpmContext(ctx, native, tcti, options)
    } catch (err) {
      throw fromNative(err)
    }
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
    this.generation++
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
  private run<T>(
    call: (ctx: NativeEsysContext) => Promise<T>,
    uses: readonly KeyHandle[] = [],
  ): Promise<T> {
    const next = this.queue.then(async () => {
      if (this.closed) {
        throw new SpiffeEdgeError('ERR_TPM_CLOSED', 'the TPM context is closed', {
          remedy: 'open a new TpmContext; this one was closed',
        })
      }
      if (this.down) await this.reopen()
      // Checked here, after any reopen: a handle number from the old context must never reach the new one.
      for (const h of uses) this.handleFor(h)
      for (let attempt = 0; ; attempt++) {
        try {
          return await call(this.ctx)
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

  /** `count` random bytes from the TPM's RNG (the TPM returns at most a digest per command). */
  async getRandom(count: number): Promise<Uint8Array> {
    if (!Number.isInteger(count) || count < 1 || count > 4096) {
      throw new RangeError('getRandom takes 1 to 4096 bytes')
    }
    const out = new Uint8Array(count)
    let filled = 0
    while (filled < count) {
      const chunk = await this.run((c) => c.getRandom(Math.min(32, count - filled)))
      if (chunk.length === 0) throw new TpmError('TPM returned no random bytes', 0, '')
      out.set(chunk.subarray(0, count - filled), filled)
      filled += chunk.length
    }
    return out
  }

  /** TPM properties in [first, first+count), following moreData. */
  async getTpmProperties(first: number, count: number): Promise<Map<number, number>> {
    const all = new Map<number, number>()
    let next = first
    const end = first + count
    while (next < end) {
      const { data, moreData } = await this.run((c) =>
        c.getCapability(TPM_CAP.TPM_PROPERTIES, next, end - next),
      )
      const props = parseTpmProperties(data)
      let last = -1
      for (const [k, v] of props) {
        if (k >= end) continue
        all.set(k, v)
        last = Math.max(last, k)
      }
      if (!moreData || last < next) break
      next = last + 1
    }
    return all
  }

  async fixedProperties(): Promise<FixedProperties> {
    const p = await this.getTpmProperties(TPM_PT.FAMILY_INDICATOR, 0x30)
    const get = (k: number) => p.get(k) ?? 0
    const v1 = get(TPM_PT.FIRMWARE_VERSION_1)
    const v2 = get(TPM_PT.FIRMWARE_VERSION_2)
    return {
      manufacturer: propertyString(get(TPM_PT.MANUFACTURER)),
      manufacturerId: get(TPM_PT.MANUFACTURER),
      vendorString: [
        TPM_PT.VENDOR_STRING_1,
        TPM_PT.VENDOR_STRING_2,
        TPM_PT.VENDOR_STRING_3,
        TPM_PT.VENDOR_STRING_4,
      ]
        .map((k) => propertyString(get(k)))
        .join('')
        .trim(),
      firmwareVersion1: v1,
      firmwareVersion2: v2,
      firmwareVersion: [v1 >>> 16, v1 & 0xffff, v2 >>> 16, v2 & 0xffff].join('.'),
      specFamily: propertyString(get(TPM_PT.FAMILY_INDICATOR)),
      specLevel: get(TPM_PT.LEVEL),
      specRevision: get(TPM_PT.REVISION),
      nvBufferMax: get(TPM_PT.NV_BUFFER_MAX) || 512,
    }
  }

  /** Handles in a range (e.g. 0x81000000 persistent, 0x01000000 NV), following moreData. */
  async listHandles(first: number, max = 256): Promise<number[]> {
    const out: number[] = []
    let next = first
    const rangeEnd = ((first >>> 24) + 1) * 0x1000000
    for (;;) {
      const { data, moreData } = await this.run((c) => c.getCapability(TPM_CAP.HANDLES, next, max))
      const handles = parseHandles(data).filter((h) => h >= next && h < rangeEnd)
      out.push(...handles)
      if (!moreData || handles.length === 0) return out
      next = handles[handles.length - 1]! + 1
    }
  }

  /** The public area of a loaded or persistent object. */
  async readPublic(handle: number): Promise<PublicArea> {
    const r = await this.run((c) => c.readPublic(handle))
    return { public: parseTpm2bPublic(r.public), raw: r.public, name: r.name }
  }

  async nvReadPublic(index: number): Promise<NvPublic> {
    const r = await this.run((c) => c.nvReadPublic(index))
    return parseTpm2bNvPublic(r.nvPublic)
  }

  /** The whole contents of an NV index, read in chunks no larger than the TPM's NV buffer. */
  async nvReadAll(index: number): Promise<Uint8Array> {
    const pub = await this.nvReadPublic(index)
    // A fixed property: ask once per context.
    this.nvBufferMax ??= (await this.fixedProperties()).nvBufferMax
    const nvBufferMax = this.nvBufferMax
    // Prefer the index's own auth (EK certificate indices are AUTHREAD with an empty auth);
    // fall back to the owner hierarchy, whose auth is empty on an unprovisioned TPM.
    const auth = pub.attributes & TPMA_NV.AUTHREAD ? index : TPM_RH.OWNER
    const out = new Uint8Array(pub.dataSize)
    for (let off = 0; off < pub.dataSize; ) {
      const size = Math.min(nvBufferMax, 1024, pub.dataSize - off)
      const chunk = await this.run((c) => c.nvRead(index, auth, size, off))
      if (chunk.length !== size) {
        throw new TpmError(`NV read returned ${chunk.length} bytes, asked ${size}`, 0, '')
      }
      out.set(chunk, off)
      off += size
    }
    return out
  }

  private handleFor(handle: KeyHandle): number {
    if (handle.disposed) {
      throw new SpiffeEdgeError('ERR_TPM_CLOSED', 'this key handle was already disposed', {
        remedy: 'load the key again; a disposed handle is flushed from the TPM',
      })
    }
    if (this.handleGeneration.get(handle) !== this.generation) throw staleHandle()
    return handle.handle
  }

  /** Every handle is stamped with the context generation it was loaded in. */
  private track(h: KeyHandle): KeyHandle {
    this.handleGeneration.set(h, this.generation)
    return h
  }

  private readonly releaseHandle = async (h: KeyHandle): Promise<void> => {
    if (this.closed) return // close() flushed everything already
    // Loaded before a reopen, or the TPM is unreachable: the TPM that held it is gone (a reopen
    // finalizes the old context), and releasing must not throw over the error that got us here.
    if (this.down || this.handleGeneration.get(h) !== this.generation) return
    const gen = this.generation
    try {
      await this.run(async (c): Promise<void> => {
        if (gen !== this.generation) return
        if (h.persistent) await c.trClose(h.handle)
        else await c.flushContext(h.handle)
      })
    } catch (err) {
      if (!this.down) throw err
    }
  }

  /** A primary key in a hierarchy (owner, endorsement), from a template. */
  async createPrimary(hierarchy: number, template: PublicTemplate): Promise<KeyHandle> {
    const r = await this.run((c) => c.createPrimary(hierarchy, marshalTpm2bPublic(template)))
    return this.track(
      new KeyHandle(r.handle, parseTpm2bPublic(r.public), r.name, false, this.releaseHandle),
    )
  }

  /** Creates a key under a loaded parent; the result is a blob to load (and to store). */
  async createKey(parent: KeyHandle, template: PublicTemplate): Promise<KeyBlob> {
    const p = this.handleFor(parent)
    const r = await this.run((c) => c.create(p, marshalTpm2bPublic(template)), [parent])
    return { private: r.private, public: r.public }
  }

  async loadKey(parent: KeyHandle, blob: KeyBlob): Promise<KeyHandle> {
    const p = this.handleFor(parent)
    const pub = parseTpm2bPublic(blob.public)
    const r = await this.run((c) => c.load(p, blob.private, blob.public), [parent])
    return this.track(new KeyHandle(r.handle, pub, r.name, false, this.releaseHandle))
  }

  /** A reference to a persistent object (EK at 0x81010001, …); disposing it evicts nothing. */
  async persistentKey(tpmHandle: number): Promise<KeyHandle> {
    const area = await this.readPublic(tpmHandle)
    const r = await this.run((c) => c.trFromTpmPublic(tpmHandle))
    return this.track(new KeyHandle(r.handle, area.public, r.name, true, this.releaseHandle))
  }

  /** Makes a loaded transient persistent at tpmHandle (owner auth); the transient stays loaded. */
  async evictControl(key: KeyHandle, persistentTpmHandle: number): Promise<void> {
    const k = this.handleFor(key)
    const r = await this.run((c) => c.evictControl(k, persistentTpmHandle), [key])
    // The new persistent reference is not needed: callers reopen it with persistentKey().
    if (r.handle !== 0) await this.run((c) => c.trClose(r.handle))
  }

  /** Removes a persistent object from the TPM (owner auth). */
  async evictPersistent(tpmHandle: number): Promise<void> {
    const ref = await this.run((c) => c.trFromTpmPublic(tpmHandle))
    await this.run((c) => c.evictControl(ref.handle, tpmHandle))
  }

  /**
   * TPM2_ActivateCredential: the EK (under a PolicySecret(endorsement) session, as the TCG EK
   * policy demands) decrypts the credential only if it was made for this AK's Name.
   */
  async activateCredential(
    ak: KeyHandle,
    ek: KeyHandle,
    credentialBlob: Uint8Array,
    encryptedSecret: Uint8Array,
  ): Promise<Uint8Array> {
    const a = this.handleFor(ak)
    const e = this.handleFor(ek)
    const nameAlg = ek.public.nameAlg
    // Which session satisfies the EK's policy: plain PolicySecret(endorsement) (templates L-1,
    // L-2), or that inside a PolicyOR (high-range templates). Anything else: refuse up front.
    const secretBranch = policySecretDigest(nameAlg, ENDORSEMENT_NAME)
    const otherBranch = EK_POLICY_C.get(nameAlg)
    let orBranches: Uint8Array[] | undefined
    if (!sameBytes(ek.public.authPolicy, secretBranch)) {
      if (
        otherBranch &&
        sameBytes(ek.public.authPolicy, policyOrDigest(nameAlg, [secretBranch, otherBranch]))
      ) {
        orBranches = [secretBranch, otherBranch]
      } else {
        throw new SpiffeEdgeError(
          'ERR_TPM_UNSUPPORTED',
          "the EK's authPolicy is not a TCG EK policy",
          {
            remedy: 'use an EK created from a TCG EK template (L-1, L-2 or the high-range ones)',
          },
        )
      }
    }
    const session = await this.run((c) => c.startPolicySession(nameAlg), [ak, ek])
    const gen = this.generation
    const sameContext = () => {
      if (gen !== this.generation) throw staleHandle()
    }
    try {
      await this.run(async (c) => {
        sameContext()
        return c.policySecret(session.handle, TPM_RH.ENDORSEMENT)
      })
      if (orBranches) {
        const list = marshalDigestList(orBranches)
        await this.run(async (c) => {
          sameContext()
          return c.policyOr(session.handle, list)
        })
      }
      return await this.run(
        (c) => c.activateCredential(a, e, session.handle, credentialBlob, encryptedSecret),
        [ak, ek],
      )
    } finally {
      // As releaseHandle: a session of a lost context is gone with it.
      if (!this.down && gen === this.generation) {
        await this.run(async (c) =>
          gen === this.generation ? c.flushContext(session.handle) : { flushed: 0 },
        ).catch((err) => {
          if (!this.down) throw err
        })
      }
    }
  }

  /** TPM2_Quote over a PCR selection, with the AK's own scheme; nonce is the qualifying data. */
  async quote(ak: KeyHandle, nonce: Uint8Array, selection: PcrSelection): Promise<Attestation> {
    const a = this.handleFor(ak)
    const sel = marshalPcrSelection(selection)
    const r = await this.run((c) => c.quote(a, nonce, sel), [ak])
    return { message: r.quoted, signature: r.signature }
  }

  /** TPM2_Certify: the AK attests that `key` lives in this TPM (its Name is in the message). */
  async certify(key: KeyHandle, ak: KeyHandle, nonce: Uint8Array): Promise<Attestation> {
    const k = this.handleFor(key)
    const a = this.handleFor(ak)
    const r = await this.run((c) => c.certify(k, a, nonce), [key, ak])
    return { message: r.certifyInfo, signature: r.signature }
  }

  /** Signs a digest with an unrestricted signing key; returns a marshaled TPMT_SIGNATURE. */
  async sign(key: KeyHandle, digest: Uint8Array): Promise<Uint8Array> {
    const k = this.handleFor(key)
    return this.run((c) => c.sign(k, digest), [key])
  }

  /**
   * PCR values for a selection. TPM2_PCR_Read returns at most 8 digests per call and says which
   * it returned, so this asks again for the rest; a PCR the TPM never returns (inactive bank) is an
   * error rather than a silently missing value.
   */
  async pcrRead(selection: PcrSelection): Promise<PcrValues> {
    const out = new Map<number, Map<number, Uint8Array>>()
    let remaining = selection.map((s) => ({ hashAlg: s.hashAlg, pcrs: [...s.pcrs] }))
    while (remaining.some((s) => s.pcrs.length > 0)) {
      const ask = remaining.filter((s) => s.pcrs.length > 0)
      const r = await this.run((c) => c.pcrRead(marshalPcrSelection(ask)))
      const got = parsePcrSelection(r.selection)
      const digests = parseTpmlDigest(r.values)
      const pairs = got.flatMap((s) => s.pcrs.map((p) => [s.hashAlg, p] as const))
      if (pairs.length === 0 || pairs.length !== digests.length) {
        throw new TpmError(
          `the TPM returned no values for PCRs it was asked for (inactive bank?)`,
          0,
          '',
        )
      }
      pairs.forEach(([bank, pcr], i) => {
        const m = out.get(bank) ?? new Map<number, Uint8Array>()
        out.set(bank, m)
        m.set(pcr, digests[i]!)
      })
      remaining = remaining.map((s) => ({
        hashAlg: s.hashAlg,
        pcrs: s.pcrs.filter((p) => !out.get(s.hashAlg)?.has(p)),
      }))
    }
    return out
  }

  /** How many transient objects the TPM itself has loaded (a leak shows up here). */
  async loadedTransientCount(): Promise<number> {
    return (await this.listHandles(0x80000000)).length
  }

  /** Closes the context after queued calls finish. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.queue
    this.closed = true
    // The addon flushes every transient this context still holds before finalizing.
    this.ctx.close()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

function staleHandle(): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_TPM_CLOSED', 'this handle is from before a TPM reconnect', {
    remedy: 'load the key again from its blob; the TPM restarted and forgot it',
  })
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

/** The Name of TPM_RH_ENDORSEMENT: its handle, big-endian. */
const ENDORSEMENT_NAME = Uint8Array.from([0x40, 0x00, 0x00, 0x0b])

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/** TPML_DIGEST: count, then TPM2B_DIGESTs (at most 8 in a PCR_Read response). */
function parseTpmlDigest(bytes: Uint8Array): Uint8Array[] {
  const r = new Reader(bytes, 'TPML_DIGEST')
  const count = r.u32('count')
  if (count > 8) throw new TpmStructureError(`TPML_DIGEST: count ${count} exceeds 8`)
  const out: Uint8Array[] = []
  for (let i = 0; i < count; i++) out.push(r.sized('digest', 64))
  r.end()
  return out
}
