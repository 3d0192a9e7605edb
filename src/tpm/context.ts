import { SpiffeEdgeError } from '../errors.js'
import { loadNative } from '../native/load.js'
import type { NativeBinding, NativeEsysContext } from '../native/types.js'
import { TPM_CAP, TPM_PT, TPM_RH } from './constants.js'
import { fromNative, TpmError } from './errors.js'
import { parseHandles, parseTpmProperties, propertyString } from './structures/capability.js'
import { type NvPublic, parseTpm2bNvPublic, TPMA_NV } from './structures/nv.js'
import { parseTpm2bPublic, type TpmPublic } from './structures/public.js'

export interface OpenOptions {
  /** Injected binding (tests, or an embedding that loads the addon itself). */
  readonly native?: NativeBinding
  /** How often a retryable response code (RETRY, YIELDED, TESTING) is retried. */
  readonly retries?: number
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
  private readonly ctx: NativeEsysContext
  private readonly retries: number
  readonly tcti: string

  private constructor(ctx: NativeEsysContext, tcti: string, retries: number) {
    this.ctx = ctx
    this.tcti = tcti
    this.retries = retries
  }

  static async open(tcti: string, options: OpenOptions = {}): Promise<TpmContext> {
    const native = options.native ?? loadNative()
    try {
      const ctx = await native.openContext(tcti)
      return new TpmContext(ctx, tcti, options.retries ?? 5)
    } catch (err) {
      throw fromNative(err)
    }
  }

  /** Runs one native call after the ones before it, retrying retryable TPM codes. */
  private run<T>(call: (ctx: NativeEsysContext) => Promise<T>): Promise<T> {
    const next = this.queue.then(async () => {
      if (this.closed) {
        throw new SpiffeEdgeError('ERR_TPM_CLOSED', 'the TPM context is closed', {
          remedy: 'open a new TpmContext; this one was closed',
        })
      }
      for (let attempt = 0; ; attempt++) {
        try {
          return await call(this.ctx)
        } catch (raw) {
          const err = fromNative(raw)
          if (err instanceof TpmError && err.retryable && attempt < this.retries) {
            await new Promise((r) => setTimeout(r, 10 * 2 ** attempt))
            continue
          }
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
    const { nvBufferMax } = await this.fixedProperties()
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

  /** Closes the context after queued calls finish. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.queue
    this.closed = true
    this.ctx.close()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}
