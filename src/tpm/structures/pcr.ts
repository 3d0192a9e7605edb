import { UsageError } from '../../errors.js'
import { HASH_ALGS } from '../constants.js'
import { TpmStructureError } from '../errors.js'
import { Reader } from './reader.js'

/** PCRs per bank, in listed bank order; `pcrs` ascending (the order a quote digests them in). */
export type PcrSelection = { hashAlg: number; pcrs: number[] }[]

/** PCR values by bank (TPM hash id), then by PCR index. */
export type PcrValues = ReadonlyMap<number, ReadonlyMap<number, Uint8Array>>

// The spec's PCR_SELECT_MAX is 3 on PC TPMs; allow room for bigger platforms, but keep it bounded.
const MAX_SELECT_BYTES = 32
// TPML_PCR_SELECTION holds at most HASH_COUNT entries; a handful of banks exists in practice.
const MAX_BANKS = 16
// TPM2_PCR_Read and TPM2_Quote always marshal at least PCR_SELECT_MIN bytes.
const MIN_SELECT_BYTES = 3

const BANK_NAMES: ReadonlyMap<string, number> = new Map(
  [...HASH_ALGS].map(([id, h]) => [h.name, id] as const),
)

/** The tpm2-tools name of a bank (sha256), or its hex id when unknown. */
export function bankName(hashAlg: number): string {
  return HASH_ALGS.get(hashAlg)?.name ?? `0x${hashAlg.toString(16)}`
}

/** Reads a TPML_PCR_SELECTION from a reader positioned at it. */
export function readPcrSelection(r: Reader): PcrSelection {
  const count = r.u32('pcrSelect.count')
  if (count > MAX_BANKS) {
    throw new TpmStructureError(`TPML_PCR_SELECTION: count ${count} exceeds ${MAX_BANKS}`)
  }
  const out: PcrSelection = []
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16('pcrSelect.hash')
    if (!HASH_ALGS.has(hashAlg)) {
      throw new TpmStructureError(
        `TPML_PCR_SELECTION: unsupported bank hash 0x${hashAlg.toString(16)}`,
      )
    }
    const size = r.u8('pcrSelect.sizeofSelect')
    if (size > MAX_SELECT_BYTES) {
      throw new TpmStructureError(`TPML_PCR_SELECTION: sizeofSelect ${size} too large`)
    }
    const bits = r.bytesOf(size, 'pcrSelect.pcrSelect')
    const pcrs: number[] = []
    for (let j = 0; j < size; j++) {
      for (let b = 0; b < 8; b++) if (bits[j]! & (1 << b)) pcrs.push(j * 8 + b)
    }
    out.push({ hashAlg, pcrs })
  }
  return out
}

/** Parses a marshaled TPML_PCR_SELECTION; trailing bytes are an error. */
export function parsePcrSelection(bytes: Uint8Array): PcrSelection {
  const r = new Reader(bytes, 'TPML_PCR_SELECTION')
  const sel = readPcrSelection(r)
  r.end()
  return sel
}

/** Marshals a TPML_PCR_SELECTION (bit i of byte j selects PCR 8j+i). */
export function marshalPcrSelection(sel: PcrSelection): Uint8Array {
  if (sel.length > MAX_BANKS) throw new TpmStructureError('TPML_PCR_SELECTION: too many banks')
  const parts: number[] = [
    (sel.length >>> 24) & 0xff,
    (sel.length >>> 16) & 0xff,
    (sel.length >>> 8) & 0xff,
    sel.length & 0xff,
  ]
  for (const { hashAlg, pcrs } of sel) {
    const top = pcrs.length === 0 ? -1 : Math.max(...pcrs)
    const size = Math.max(MIN_SELECT_BYTES, Math.ceil((top + 1) / 8))
    if (size > MAX_SELECT_BYTES || pcrs.some((p) => !Number.isInteger(p) || p < 0)) {
      throw new TpmStructureError('TPML_PCR_SELECTION: PCR index out of range')
    }
    const bits = new Array<number>(size).fill(0)
    for (const p of pcrs) bits[p >> 3]! |= 1 << (p & 7)
    parts.push((hashAlg >> 8) & 0xff, hashAlg & 0xff, size, ...bits)
  }
  return Uint8Array.from(parts)
}

/**
 * Parses a tpm2-tools PCR selection string: banks joined by '+', each `bank:list` where list is
 * comma-separated indices or `all` (0-23). Indices come back sorted and unique.
 */
export function parsePcrSpec(spec: string): PcrSelection {
  const bad = (why: string) =>
    new UsageError(
      `PCR selection '${spec}': ${why}`,
      'write PCR selections as tpm2-tools does, e.g. sha256:0,1,7+sha1:0',
    )
  if (spec.trim() === '') throw bad('empty')
  const out: PcrSelection = []
  for (const part of spec.split('+')) {
    const m = /^([a-z0-9]+):([0-9,]+|all)$/i.exec(part.trim())
    if (!m) throw bad(`'${part}' is not bank:indices`)
    const hashAlg = BANK_NAMES.get(m[1]!.toLowerCase())
    if (hashAlg === undefined) throw bad(`unknown bank '${m[1]}'`)
    if (out.some((s) => s.hashAlg === hashAlg)) throw bad(`bank '${m[1]}' listed twice`)
    const list = m[2]!.toLowerCase()
    const pcrs =
      list === 'all'
        ? Array.from({ length: 24 }, (_, i) => i)
        : list.split(',').map((s) => {
            if (!/^\d{1,2}$/.test(s) || Number(s) > 23) throw bad(`'${s}' is not a PCR index 0-23`)
            return Number(s)
          })
    out.push({ hashAlg, pcrs: [...new Set(pcrs)].sort((a, b) => a - b) })
  }
  return out
}

/** Formats a selection back into the tpm2-tools form (sha256:0,1,7+sha1:0). */
export function formatPcrSpec(sel: PcrSelection): string {
  return sel.map((s) => `${bankName(s.hashAlg)}:${s.pcrs.join(',')}`).join('+')
}

/**
 * Splits raw concatenated digests (what `tpm2_pcrread -o` writes) into values, in selection
 * order; the length must match the selection exactly.
 */
export function pcrValuesFromConcatenated(sel: PcrSelection, bytes: Uint8Array): PcrValues {
  const out = new Map<number, Map<number, Uint8Array>>()
  let offset = 0
  for (const { hashAlg, pcrs } of sel) {
    const size = HASH_ALGS.get(hashAlg)?.size
    if (size === undefined) {
      throw new TpmStructureError(`PCR values: unsupported bank 0x${hashAlg.toString(16)}`)
    }
    const bank = out.get(hashAlg) ?? new Map<number, Uint8Array>()
    out.set(hashAlg, bank)
    for (const p of pcrs) {
      if (offset + size > bytes.length) {
        throw new TpmStructureError(
          `PCR values: ${bytes.length} bytes is too short for ${formatPcrSpec(sel)}`,
        )
      }
      bank.set(p, bytes.subarray(offset, offset + size))
      offset += size
    }
  }
  if (offset !== bytes.length) {
    throw new TpmStructureError(
      `PCR values: ${bytes.length - offset} bytes more than ${formatPcrSpec(sel)} needs`,
    )
  }
  return out
}
