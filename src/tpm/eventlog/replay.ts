/**
 * Replay: extend a software PCR bank with every event's digest, in log order, and compare with the
 * values the quote signed. A match proves each event's digest (and the order within one PCR), not
 * its type or data: see facts.ts for what may be derived from that.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { HASH_ALGS } from '../constants.js'
import { bankName, type PcrValues } from '../structures/pcr.js'
import { EventLogError } from './errors.js'
import { EV, type EventLog } from './types.js'

/** The PCR values the log predicts for one bank: only PCRs with events, plus PCR 0's locality. */
export function replayBank(log: EventLog, hashAlg: number): Map<number, Uint8Array> {
  const h = HASH_ALGS.get(hashAlg)
  if (h === undefined || !log.banks.includes(hashAlg)) {
    throw new EventLogError(
      'bank_missing',
      `the event log (banks ${log.banks.map(bankName).join(', ')}) has no ${bankName(hashAlg)} bank`,
    )
  }
  const pcrs = new Map<number, Uint8Array>()
  const initial = (pcr: number) => {
    const v = new Uint8Array(h.size)
    // TPM2_Startup at locality 3 or 4 (H-CRTM) starts PCR 0 at that locality, not zero.
    if (pcr === 0) v[h.size - 1] = log.startupLocality
    return v
  }
  for (const e of log.events) {
    if (e.type === EV.NO_ACTION) continue
    const d = e.digests.get(hashAlg)
    if (d === undefined) {
      throw new EventLogError(
        'bank_missing',
        `event ${e.index} (PCR ${e.pcr}) has no ${bankName(hashAlg)} digest`,
        e.index,
      )
    }
    const prev = pcrs.get(e.pcr) ?? initial(e.pcr)
    pcrs.set(e.pcr, new Uint8Array(createHash(h.name).update(prev).update(d).digest()))
  }
  if (log.startupLocality !== 0 && !pcrs.has(0)) pcrs.set(0, initial(0))
  return pcrs
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

/**
 * Checks that the log replays to `quoted` on every PCR of `pcrs` in `hashAlg`: a PCR with no events
 * must still be at its reset value. Throws EventLogError 'replay' naming the first PCR that differs.
 */
export function checkReplay(
  log: EventLog,
  hashAlg: number,
  pcrs: readonly number[],
  quoted: PcrValues,
): Map<number, Uint8Array> {
  const replayed = replayBank(log, hashAlg)
  const size = HASH_ALGS.get(hashAlg)!.size
  for (const pcr of pcrs) {
    const q = quoted.get(hashAlg)?.get(pcr)
    if (q === undefined) {
      throw new EventLogError('replay', `PCR ${bankName(hashAlg)}:${pcr} is not in the quote`)
    }
    const r = replayed.get(pcr) ?? new Uint8Array(size)
    if (q.length !== r.length || !timingSafeEqual(q, r)) {
      const n = log.events.filter((e) => e.pcr === pcr && e.type !== EV.NO_ACTION).length
      throw new EventLogError(
        'replay',
        `PCR ${bankName(hashAlg)}:${pcr}: the log's ${n} events replay to ${hex(r)}, the quote has ${hex(q)}`,
      )
    }
  }
  return replayed
}
