/**
 * Pure parser for TCG PC Client event logs (the bytes of binary_bios_measurements): the TCG 1.2
 * SHA-1 format and the crypto-agile format (a Spec ID Event03 header, then TCG_PCR_EVENT2 events
 * with one digest per bank). Every length is bounded before it is used: the whole log, the event
 * count, each event's data, the digest count and sizes; a hostile log costs at most one pass over
 * its bytes. The log is little-endian (unlike TPM structures).
 */
import { HASH_ALGS } from '../constants.js'
import { EventLogError } from './errors.js'
import { EV, type EventLog, type LogEvent } from './types.js'

export interface EventLogLimits {
  /** Whole log; real logs are 10-100 KiB. */
  readonly maxBytes: number
  readonly maxEvents: number
  /** One event's data (a dbx variable is the largest legitimate one, ~30 KiB). */
  readonly maxEventData: number
}

export const DEFAULT_LIMITS: EventLogLimits = {
  maxBytes: 1 << 20,
  maxEvents: 4096,
  maxEventData: 128 << 10,
}

// Banks the header may declare; the spec's TPML_DIGEST_VALUES holds at most HASH_COUNT entries.
const MAX_ALGORITHMS = 16
const MAX_DIGEST_SIZE = 64
const SPEC_ID_03 = 'Spec ID Event03\0'
const STARTUP_LOCALITY = 'StartupLocality\0'
const SHA1 = 0x0004

class LeReader {
  offset = 0
  readonly bytes: Uint8Array
  readonly eventIndex: number

  constructor(bytes: Uint8Array, eventIndex: number) {
    this.bytes = bytes
    this.eventIndex = eventIndex
  }

  get remaining(): number {
    return this.bytes.length - this.offset
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new EventLogError(
        'truncated',
        `event ${this.eventIndex}: the log ends inside ${field} (needs ${n} bytes at offset ${this.offset}, ${this.remaining} left)`,
        this.eventIndex,
      )
    }
  }

  u8(field: string): number {
    this.need(1, field)
    return this.bytes[this.offset++]!
  }

  u16(field: string): number {
    this.need(2, field)
    const b = this.bytes
    const v = b[this.offset]! | (b[this.offset + 1]! << 8)
    this.offset += 2
    return v
  }

  u32(field: string): number {
    this.need(4, field)
    const b = this.bytes
    const o = this.offset
    this.offset += 4
    return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0
  }

  take(n: number, field: string): Uint8Array {
    this.need(n, field)
    const out = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }
}

const ascii = (b: Uint8Array) => String.fromCharCode(...b)

function startsWith(data: Uint8Array, text: string): boolean {
  if (data.length < text.length) return false
  for (let i = 0; i < text.length; i++) if (data[i] !== text.charCodeAt(i)) return false
  return true
}

interface SpecId {
  readonly banks: readonly { readonly alg: number; readonly size: number }[]
}

/** TCG_EfiSpecIDEventStruct: signature, platform class, versions, uintnSize, the banks. */
function parseSpecId(data: Uint8Array): SpecId {
  const r = new LeReader(data, 0)
  const bad = (why: string): never => {
    throw new EventLogError('header', `Spec ID Event03: ${why}`, 0)
  }
  try {
    r.take(16, 'signature')
    r.u32('platformClass')
    r.u8('specVersionMinor')
    const major = r.u8('specVersionMajor')
    r.u8('specErrata')
    const uintn = r.u8('uintnSize')
    if (major !== 2) bad(`spec version major is ${major}, not 2`)
    if (uintn !== 1 && uintn !== 2) bad(`uintnSize ${uintn} is not 1 or 2`)
    const n = r.u32('numberOfAlgorithms')
    if (n === 0 || n > MAX_ALGORITHMS) bad(`numberOfAlgorithms ${n} is not 1..${MAX_ALGORITHMS}`)
    const banks: { alg: number; size: number }[] = []
    for (let i = 0; i < n; i++) {
      const alg = r.u16('algorithmId')
      const size = r.u16('digestSize')
      const known = HASH_ALGS.get(alg)?.size
      if (known !== undefined && known !== size) {
        bad(`algorithm 0x${alg.toString(16)} has digest size ${size}, not ${known}`)
      }
      if (size === 0 || size > MAX_DIGEST_SIZE) bad(`digest size ${size} out of range`)
      if (banks.some((b) => b.alg === alg)) bad(`algorithm 0x${alg.toString(16)} listed twice`)
      banks.push({ alg, size })
    }
    const vendor = r.u8('vendorInfoSize')
    r.take(vendor, 'vendorInfo')
    if (r.remaining !== 0) bad(`${r.remaining} trailing bytes`)
    return { banks }
  } catch (err) {
    if (err instanceof EventLogError && err.reason === 'truncated') bad('truncated')
    throw err
  }
}

/** Parses an event log; throws EventLogError (code ERR_EVENT_LOG) with a reason on any fault. */
export function parseEventLog(
  bytes: Uint8Array,
  limits: EventLogLimits = DEFAULT_LIMITS,
): EventLog {
  if (bytes.length > limits.maxBytes) {
    throw new EventLogError(
      'too_large',
      `the event log is ${bytes.length} bytes, over ${limits.maxBytes}`,
    )
  }
  if (bytes.length === 0) throw new EventLogError('truncated', 'the event log is empty')
  const r = new LeReader(bytes, 0)
  const data = (index: number): Uint8Array => {
    const size = r.u32('eventSize')
    if (size > limits.maxEventData) {
      throw new EventLogError(
        'event_too_large',
        `event ${index}: data is ${size} bytes, over ${limits.maxEventData}`,
        index,
      )
    }
    return r.take(size, 'event data')
  }

  // The first event is always in the SHA-1 format (TCG_PCClientPCREvent).
  const firstPcr = r.u32('pcrIndex')
  const firstType = r.u32('eventType')
  const firstDigest = r.take(20, 'digest')
  const firstData = data(0)
  const agile = firstType === EV.NO_ACTION && firstPcr === 0 && startsWith(firstData, SPEC_ID_03)
  const events: LogEvent[] = []
  let startupLocality = 0
  let localitySeen = false
  const noteLocality = (e: LogEvent) => {
    if (e.type !== EV.NO_ACTION || !startsWith(e.data, STARTUP_LOCALITY)) return
    if (localitySeen || e.pcr !== 0 || e.data.length !== STARTUP_LOCALITY.length + 1) {
      throw new EventLogError(
        'header',
        `event ${e.index}: a second or malformed StartupLocality event`,
        e.index,
      )
    }
    localitySeen = true
    startupLocality = e.data[STARTUP_LOCALITY.length]!
    if (startupLocality > 4) {
      throw new EventLogError(
        'header',
        `event ${e.index}: StartupLocality ${startupLocality} is not 0-4`,
        e.index,
      )
    }
  }
  const push = (e: LogEvent) => {
    if (events.length >= limits.maxEvents) {
      throw new EventLogError(
        'too_many_events',
        `the event log has more than ${limits.maxEvents} events`,
      )
    }
    // EV_NO_ACTION events are not extended; Windows logs put them at PCR 0xffffffff.
    if (e.pcr > 23 && e.type !== EV.NO_ACTION) {
      throw new EventLogError('header', `event ${e.index}: PCR index ${e.pcr} is not 0-23`, e.index)
    }
    noteLocality(e)
    events.push(e)
  }

  if (!agile) {
    push({
      index: 0,
      pcr: firstPcr,
      type: firstType,
      digests: new Map([[SHA1, firstDigest]]),
      data: firstData,
    })
    for (let i = 1; r.remaining > 0; i++) {
      const pcr = r.u32('pcrIndex')
      const type = r.u32('eventType')
      const digest = r.take(20, 'digest')
      push({ index: i, pcr, type, digests: new Map([[SHA1, digest]]), data: data(i) })
    }
    return { format: 'sha1', banks: [SHA1], events, startupLocality }
  }

  if (firstDigest.some((b) => b !== 0)) {
    throw new EventLogError('header', 'the Spec ID event digest is not zero', 0)
  }
  const spec = parseSpecId(firstData)
  const sizes = new Map(spec.banks.map((b) => [b.alg, b.size]))
  for (let i = 1; r.remaining > 0; i++) {
    const pcr = r.u32('pcrIndex')
    const type = r.u32('eventType')
    const count = r.u32('digests.count')
    if (count > spec.banks.length) {
      throw new EventLogError(
        'digest',
        `event ${i}: ${count} digests, but the header declares ${spec.banks.length} banks`,
        i,
      )
    }
    const digests = new Map<number, Uint8Array>()
    for (let j = 0; j < count; j++) {
      const alg = r.u16('digests.hashAlg')
      const size = sizes.get(alg)
      if (size === undefined) {
        throw new EventLogError(
          'digest',
          `event ${i}: digest of algorithm 0x${alg.toString(16)} the header does not declare`,
          i,
        )
      }
      if (digests.has(alg)) {
        throw new EventLogError(
          'digest',
          `event ${i}: two digests of algorithm 0x${alg.toString(16)}`,
          i,
        )
      }
      digests.set(alg, r.take(size, 'digest'))
    }
    push({ index: i, pcr, type, digests, data: data(i) })
  }
  return { format: 'crypto-agile', banks: spec.banks.map((b) => b.alg), events, startupLocality }
}

/** For diagnostics: the ASCII of printable event data (EV_ACTION strings, GRUB commands). */
export function printable(data: Uint8Array, max = 120): string | undefined {
  const end = data.length > 0 && data[data.length - 1] === 0 ? data.length - 1 : data.length
  if (end === 0) return undefined
  for (let i = 0; i < end; i++) {
    const c = data[i]!
    if (c < 0x20 || c > 0x7e) return undefined
  }
  const s = ascii(data.subarray(0, Math.min(end, max)))
  return end > max ? `${s}…` : s
}
