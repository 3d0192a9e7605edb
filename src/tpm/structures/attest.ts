import { TpmStructureError } from '../errors.js'
import { type PcrSelection, readPcrSelection } from './pcr.js'
import { Reader } from './reader.js'

/** TPM_GENERATED_VALUE: marks structures the TPM itself produced (checked by the verifier). */
export const TPM_GENERATED = 0xff544347

export const TPM_ST_ATTEST = { CERTIFY: 0x8017, QUOTE: 0x8018 } as const

// sizeof(TPMU_NAME) = 2 + 64; TPM2B_DATA holds a TPMT_HA; TPM2B_DIGEST a TPMU_HA.
const MAX_NAME = 66
const MAX_DATA = 66
const MAX_DIGEST = 64

export interface ClockInfo {
  readonly clock: bigint
  readonly resetCount: number
  readonly restartCount: number
  readonly safe: boolean
}

export interface QuoteInfo {
  readonly kind: 'quote'
  readonly pcrSelect: PcrSelection
  readonly pcrDigest: Uint8Array
}

export interface CertifyInfo {
  readonly kind: 'certify'
  readonly name: Uint8Array
  readonly qualifiedName: Uint8Array
}

export interface TpmAttest {
  /** Left to the verifier to check, so a wrong value is a verification failure, not a parse one. */
  readonly magic: number
  readonly type: number
  readonly qualifiedSigner: Uint8Array
  readonly extraData: Uint8Array
  readonly clockInfo: ClockInfo
  readonly firmwareVersion: bigint
  readonly attested: QuoteInfo | CertifyInfo
  /** The exact bytes parsed: the signature is over these. */
  readonly raw: Uint8Array
}

/** Parses a TPMS_ATTEST of type QUOTE or CERTIFY; other types and trailing bytes are rejected. */
export function parseAttest(bytes: Uint8Array): TpmAttest {
  const r = new Reader(bytes, 'TPMS_ATTEST')
  const magic = r.u32('magic')
  const type = r.u16('type')
  const qualifiedSigner = r.sized('qualifiedSigner', MAX_NAME)
  const extraData = r.sized('extraData', MAX_DATA)
  const clock = r.u64('clockInfo.clock')
  const resetCount = r.u32('clockInfo.resetCount')
  const restartCount = r.u32('clockInfo.restartCount')
  const safe = r.u8('clockInfo.safe')
  if (safe > 1) throw new TpmStructureError(`TPMS_ATTEST: clockInfo.safe is ${safe}, not 0 or 1`)
  const firmwareVersion = r.u64('firmwareVersion')
  let attested: QuoteInfo | CertifyInfo
  if (type === TPM_ST_ATTEST.QUOTE) {
    const pcrSelect = readPcrSelection(r)
    attested = { kind: 'quote', pcrSelect, pcrDigest: r.sized('quote.pcrDigest', MAX_DIGEST) }
  } else if (type === TPM_ST_ATTEST.CERTIFY) {
    const name = r.sized('certify.name', MAX_NAME)
    attested = { kind: 'certify', name, qualifiedName: r.sized('certify.qualifiedName', MAX_NAME) }
  } else {
    throw new TpmStructureError(`TPMS_ATTEST: unsupported type 0x${type.toString(16)}`)
  }
  r.end()
  return {
    magic,
    type,
    qualifiedSigner,
    extraData,
    clockInfo: { clock, resetCount, restartCount, safe: safe === 1 },
    firmwareVersion,
    attested,
    raw: bytes,
  }
}
