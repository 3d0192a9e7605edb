/**
 * TpmContext: the one API callers use for a TPM. The queue, reconnects and handle ownership live
 * in connection.ts, KeyHandle in key-handle.ts, the attesting commands in flows.ts; this file
 * keeps the reads, key lifecycle and re-exports, so callers import from here alone.
 */

import { type OpenOptions, TpmConnection, type TpmHealth } from './connection.js'
import { TPM_CAP, TPM_PT, TPM_RH } from './constants.js'
import { TpmError, TpmStructureError } from './errors.js'
import type { Attestation, EkPolicySession } from './flows.js'
import * as flows from './flows.js'
import type { KeyBlob, KeyHandle } from './key-handle.js'
import { LoadedShares, YieldableObjects } from './shares.js'
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
  objectName,
  type PublicTemplate,
  parseTpm2bPublic,
  type TpmPublic,
} from './structures/public.js'
import { Reader } from './structures/reader.js'
import { srkTemplate } from './templates.js'

export { isConnectionFailure, type OpenOptions, type TpmHealth } from './connection.js'
export type { Attestation, EkPolicySession } from './flows.js'
export { type KeyBlob, KeyHandle } from './key-handle.js'

/** A loaded key's share name: its private blob, which no other key has. */
function shareId(blob: KeyBlob): string {
  return `key:${Buffer.from(blob.private).toString('base64')}`
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
  private readonly conn: TpmConnection
  private nvBufferMax: number | undefined
  /** Objects several owners hold loaded at once: the SRK, a key across an attestation. */
  private readonly shares: LoadedShares
  private readonly yieldable = new YieldableObjects()
  readonly tcti: string

  private constructor(conn: TpmConnection) {
    this.conn = conn
    this.tcti = conn.tcti
    this.shares = new LoadedShares(conn)
  }

  static async open(tcti: string, options: OpenOptions = {}): Promise<TpmContext> {
    return new TpmContext(await TpmConnection.open(tcti, options))
  }

  /** Whether the TPM answered the last command; while not, the failure that broke it. */
  health(): TpmHealth {
    return this.conn.health()
  }

  /** `count` random bytes from the TPM's RNG (the TPM returns at most a digest per command). */
  async getRandom(count: number): Promise<Uint8Array> {
    if (!Number.isInteger(count) || count < 1 || count > 4096) {
      throw new RangeError('getRandom takes 1 to 4096 bytes')
    }
    const out = new Uint8Array(count)
    let filled = 0
    while (filled < count) {
      const chunk = await this.conn.run((c) => c.getRandom(Math.min(32, count - filled)))
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
      const { data, moreData } = await this.conn.run((c) =>
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
      const { data, moreData } = await this.conn.run((c) =>
        c.getCapability(TPM_CAP.HANDLES, next, max),
      )
      const handles = parseHandles(data).filter((h) => h >= next && h < rangeEnd)
      out.push(...handles)
      if (!moreData || handles.length === 0) return out
      next = handles[handles.length - 1]! + 1
    }
  }

  /** The public area of a loaded or persistent object. */
  async readPublic(handle: number): Promise<PublicArea> {
    const r = await this.conn.run((c) => c.readPublic(handle))
    return { public: parseTpm2bPublic(r.public), raw: r.public, name: r.name }
  }

  async nvReadPublic(index: number): Promise<NvPublic> {
    const r = await this.conn.run((c) => c.nvReadPublic(index))
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
      const chunk = await this.conn.run((c) => c.nvRead(index, auth, size, off))
      if (chunk.length !== size) {
        throw new TpmError(`NV read returned ${chunk.length} bytes, asked ${size}`, 0, '')
      }
      out.set(chunk, off)
      off += size
    }
    return out
  }

  /** A primary key in a hierarchy (owner, endorsement), from a template. */
  async createPrimary(hierarchy: number, template: PublicTemplate): Promise<KeyHandle> {
    const r = await this.yieldable.withRoom(() =>
      this.conn.run((c) => c.createPrimary(hierarchy, marshalTpm2bPublic(template))),
    )
    const pub = parseTpm2bPublic(r.public)
    return this.conn.adopt(r.handle, pub, objectName(pub), false)
  }

  /**
   * Lets `h` be flushed when a load finds no free object slot, for an object kept loaded only to
   * save work later that its holder reloads if gone (YieldableObjects). Returns the withdrawal.
   */
  yieldWhenFull(h: KeyHandle): () => void {
    return this.yieldable.offer(h)
  }

  /**
   * The storage root key (recreated from its template: same TPM, same key), loaded once for all
   * who hold it at the same time (LoadedShares). CreatePrimary is the costliest command an
   * attestation repeats (ms on swtpm, far more on chips), and an attestation holds the SRK from
   * key generation to its payload.
   */
  openSrk(): Promise<KeyHandle> {
    return this.shares.take('srk', () => this.createPrimary(TPM_RH.OWNER, srkTemplate()))
  }

  /**
   * `blob`'s key loaded under `parent`, shared with whoever else holds it (borrowLoaded): the TPM
   * attestor keeps the agent key loaded from its payload to its answer, and the CSR signature in
   * between borrows it instead of loading it again (a Load and a FlushContext fewer).
   */
  loadShared(parent: KeyHandle, blob: KeyBlob): Promise<KeyHandle> {
    return this.shares.take(shareId(blob), () => this.loadKey(parent, blob))
  }

  /** A handle to `blob`'s key if someone holds it loaded (loadShared); else undefined. */
  borrowLoaded(blob: KeyBlob): KeyHandle | undefined {
    return this.shares.borrow(shareId(blob))
  }

  /** Creates a key under a loaded parent; the result is a blob to load (and to store). */
  async createKey(parent: KeyHandle, template: PublicTemplate): Promise<KeyBlob> {
    const p = this.conn.handleFor(parent)
    const r = await this.conn.run((c) => c.create(p, marshalTpm2bPublic(template)), [parent])
    return { private: r.private, public: r.public }
  }

  async loadKey(parent: KeyHandle, blob: KeyBlob): Promise<KeyHandle> {
    const p = this.conn.handleFor(parent)
    const pub = parseTpm2bPublic(blob.public)
    const r = await this.yieldable.withRoom(
      () => this.conn.run((c) => c.load(p, blob.private, blob.public), [parent]),
      parent,
    )
    // ESYS compared the TPM's Name with this public area's; hashing it here costs microseconds
    // where Esys_TR_GetName cost ~0.4 ms (native/src/commands.cc).
    return this.conn.adopt(r.handle, pub, objectName(pub), false)
  }

  /** A reference to a persistent object (EK at 0x81010001, …); disposing it evicts nothing. */
  async persistentKey(tpmHandle: number): Promise<KeyHandle> {
    const area = await this.readPublic(tpmHandle)
    const r = await this.conn.run((c) => c.trFromTpmPublic(tpmHandle))
    return this.conn.adopt(r.handle, area.public, r.name, true)
  }

  /**
   * A reference to a persistent object whose public area the caller already read: one command
   * (the ESYS reference reads it again and checks the Name); refused unless the Names match.
   */
  async persistentKeyOf(tpmHandle: number, known: PublicArea): Promise<KeyHandle> {
    const r = await this.conn.run((c) => c.trFromTpmPublic(tpmHandle))
    const h = this.conn.adopt(r.handle, known.public, r.name, true)
    if (!Buffer.from(r.name).equals(Buffer.from(known.name))) {
      await h.dispose()
      throw new TpmError(`the object at 0x${tpmHandle.toString(16)} changed`, 0, '')
    }
    return h
  }

  /** Whether a handle still names a loaded object (not disposed, not from before a reconnect). */
  isLoaded(h: KeyHandle): boolean {
    return this.conn.isCurrent(h)
  }

  /** Makes a loaded transient persistent at tpmHandle (owner auth); the transient stays loaded. */
  async evictControl(key: KeyHandle, persistentTpmHandle: number): Promise<void> {
    const k = this.conn.handleFor(key)
    const r = await this.conn.run((c) => c.evictControl(k, persistentTpmHandle), [key])
    // The new persistent reference is not needed: callers reopen it with persistentKey().
    if (r.handle !== 0) await this.conn.run((c) => c.trClose(r.handle))
  }

  /** Removes a persistent object from the TPM (owner auth). */
  async evictPersistent(tpmHandle: number): Promise<void> {
    const ref = await this.conn.run((c) => c.trFromTpmPublic(tpmHandle))
    await this.conn.run((c) => c.evictControl(ref.handle, tpmHandle))
  }

  /** See flows.activateCredential: the EK decrypts the credential only for this AK's Name. */
  activateCredential(
    ak: KeyHandle,
    ek: KeyHandle,
    credentialBlob: Uint8Array,
    encryptedSecret: Uint8Array,
    session?: EkPolicySession,
  ): Promise<Uint8Array> {
    return flows.activateCredential(this.conn, ak, ek, credentialBlob, encryptedSecret, session)
  }

  /** See flows.startEkPolicySession: the session an EK of this public area needs, owned by the caller. */
  startEkPolicySession(ekPublic: TpmPublic): Promise<EkPolicySession> {
    return flows.startEkPolicySession(this.conn, ekPublic)
  }

  /** TPM2_Quote over a PCR selection, with the AK's own scheme; nonce is the qualifying data. */
  quote(ak: KeyHandle, nonce: Uint8Array, selection: PcrSelection): Promise<Attestation> {
    return flows.quote(this.conn, ak, nonce, selection)
  }

  /** TPM2_Certify: the AK attests that `key` lives in this TPM (its Name is in the message). */
  certify(key: KeyHandle, ak: KeyHandle, nonce: Uint8Array): Promise<Attestation> {
    return flows.certify(this.conn, key, ak, nonce)
  }

  /** Signs a digest with an unrestricted signing key; returns a marshaled TPMT_SIGNATURE. */
  sign(key: KeyHandle, digest: Uint8Array): Promise<Uint8Array> {
    return flows.sign(this.conn, key, digest)
  }

  /** See flows.signWithPcrPolicy: Sign authorized by PolicyPCR(selection) with these values. */
  signWithPcrPolicy(
    key: KeyHandle,
    digest: Uint8Array,
    selection: PcrSelection,
    pcrDigest: Uint8Array,
  ): Promise<Uint8Array> {
    return flows.signWithPcrPolicy(this.conn, key, digest, selection, pcrDigest)
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
      const r = await this.conn.run((c) => c.pcrRead(marshalPcrSelection(ask)))
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
  close(): Promise<void> {
    return this.conn.close()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
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
