/** PCR values as the agent compares and sends them. */
import { createHash } from 'node:crypto'
import { HASH_ALGS } from '../../tpm/constants.js'
import type { Attestation } from '../../tpm/flows.js'
import { parseAttest } from '../../tpm/structures/attest.js'
import { bankName, type PcrValues } from '../../tpm/structures/pcr.js'
import { parseSignature } from '../../tpm/structures/signature.js'
import type { WirePcrValues } from './protocol.js'

/**
 * Whether `values` are the PCRs `quote` signed: its pcrDigest is the hash (the signature's) of the
 * selected values in bank, then index order. A PCR extended between the quote and the read makes
 * this false (quote again); the server checks the same digest.
 */
export function quoteCovers(quote: Attestation, values: PcrValues): boolean {
  const attest = parseAttest(quote.message)
  if (attest.attested.kind !== 'quote') return false
  const hash = HASH_ALGS.get(parseSignature(quote.signature).hashAlg)
  if (!hash) return false
  const h = createHash(hash.name)
  for (const { hashAlg, pcrs } of attest.attested.pcrSelect) {
    for (const p of pcrs) {
      const v = values.get(hashAlg)?.get(p)
      if (!v) return false
      h.update(v)
    }
  }
  return Buffer.from(h.digest()).equals(Buffer.from(attest.attested.pcrDigest))
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
