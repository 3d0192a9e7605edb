import { HASH_ALGS } from '../constants.js'
import { TpmStructureError } from '../errors.js'
import { Reader } from './reader.js'

export interface NvPublic {
  readonly nvIndex: number
  readonly nameAlg: number
  readonly attributes: number
  readonly authPolicy: Uint8Array
  readonly dataSize: number
}

/** TPMA_NV bits we act on. */
export const TPMA_NV = {
  PPREAD: 1 << 16,
  OWNERREAD: 1 << 17,
  AUTHREAD: 1 << 18,
  POLICYREAD: 1 << 19,
  WRITTEN: 1 << 29,
} as const

/** Parses a marshaled TPM2B_NV_PUBLIC. */
export function parseTpm2bNvPublic(bytes: Uint8Array): NvPublic {
  const outer = new Reader(bytes, 'TPM2B_NV_PUBLIC')
  const inner = new Reader(outer.sized('nvPublic'), 'TPMS_NV_PUBLIC')
  outer.end()
  const nvIndex = inner.u32('nvIndex')
  const nameAlg = inner.u16('nameAlg')
  if (!HASH_ALGS.has(nameAlg)) {
    throw new TpmStructureError(`TPMS_NV_PUBLIC: unsupported nameAlg 0x${nameAlg.toString(16)}`)
  }
  const attributes = inner.u32('attributes')
  const authPolicy = inner.sized('authPolicy', 64)
  const dataSize = inner.u16('dataSize')
  inner.end()
  return { nvIndex, nameAlg, attributes, authPolicy, dataSize }
}
