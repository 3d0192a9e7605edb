/** PCR values as the agent compares and sends them. */
import { bankName, type PcrValues } from '../../tpm/structures/pcr.js'
import type { WirePcrValues } from './protocol.js'

export function sameValues(a: PcrValues, b: PcrValues): boolean {
  for (const [bank, m] of a) {
    for (const [i, v] of m) {
      if (!Buffer.from(v).equals(Buffer.from(b.get(bank)?.get(i) ?? []))) return false
    }
  }
  return true
}

export function toWire(values: PcrValues): WirePcrValues {
  const out: Record<string, Record<string, string>> = {}
  for (const [bank, m] of values) {
    const b: Record<string, string> = {}
    for (const [i, v] of m) b[String(i)] = Buffer.from(v).toString('hex')
    out[bankName(bank)] = b
  }
  return out
}
