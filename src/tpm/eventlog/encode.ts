/**
 * Writes an event log in the format parse.ts reads: the inverse for tests, benchmarks and tools
 * that build or edit logs (the header of a crypto-agile log is regenerated, not copied).
 */
import { HASH_ALGS } from '../constants.js'
import { EventLogError } from './errors.js'
import { EV, type EventLog, type LogEvent } from './types.js'

const SHA1 = 0x0004

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n >>> 0, true)
  return b
}

function u16(n: number): Uint8Array {
  const b = new Uint8Array(2)
  new DataView(b.buffer).setUint16(0, n, true)
  return b
}

function specIdEvent(banks: readonly number[]): Uint8Array[] {
  const parts: Uint8Array[] = [
    new Uint8Array(Buffer.from('Spec ID Event03\0', 'latin1')),
    u32(0), // platformClass: client
    Uint8Array.of(0, 2, 0, 2), // version 2.0 errata 0, uintnSize 2 (64-bit UINTN)
    u32(banks.length),
  ]
  for (const b of banks) {
    const size = HASH_ALGS.get(b)?.size
    if (size === undefined)
      throw new EventLogError('header', `cannot write bank 0x${b.toString(16)}`)
    parts.push(u16(b), u16(size))
  }
  parts.push(Uint8Array.of(0)) // vendorInfoSize
  const data = Buffer.concat(parts)
  return [u32(0), u32(EV.NO_ACTION), new Uint8Array(20), u32(data.length), data]
}

/** Serialises `log`: SHA-1 format when its format is 'sha1', else crypto-agile with its banks. */
export function encodeEventLog(log: Pick<EventLog, 'format' | 'banks' | 'events'>): Uint8Array {
  const parts: Uint8Array[] = []
  const digest = (e: LogEvent, alg: number) => {
    const d = e.digests.get(alg)
    if (d === undefined) {
      throw new EventLogError('digest', `event ${e.index} has no digest for 0x${alg.toString(16)}`)
    }
    return d
  }
  if (log.format === 'sha1') {
    for (const e of log.events) {
      parts.push(u32(e.pcr), u32(e.type), digest(e, SHA1), u32(e.data.length), e.data)
    }
  } else {
    parts.push(...specIdEvent(log.banks))
    for (const e of log.events) {
      parts.push(u32(e.pcr), u32(e.type), u32(log.banks.length))
      for (const b of log.banks) parts.push(u16(b), digest(e, b))
      parts.push(u32(e.data.length), e.data)
    }
  }
  return new Uint8Array(Buffer.concat(parts))
}
