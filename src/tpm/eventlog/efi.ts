/**
 * UEFI structures inside event data: UEFI_VARIABLE_DATA (EFI variable events) and
 * EFI_SIGNATURE_LIST (PK, KEK, db, dbx contents, the authority that verified an image). Bounded by
 * the event data they are read from; a malformed one is an EventLogError 'event_data'.
 */
import { createHash } from 'node:crypto'
import { EventLogError } from './errors.js'

export const EFI_GLOBAL_VARIABLE = '8be4df61-93ca-11d2-aa0d-00e098032b8c'
export const EFI_IMAGE_SECURITY_DATABASE = 'd719b2cb-3d3a-4596-a3bc-dad00e67656f'
export const EFI_CERT_X509 = 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072'
export const EFI_CERT_SHA256 = 'c1c41626-504c-4092-aca9-41f936934328'

// A signature database with more entries than this is not a real one (dbx has a few hundred).
const MAX_SIGNATURES = 4096

const u32 = (b: Uint8Array, o: number) =>
  (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/** The mixed-endian text form of an EFI_GUID (hot: once per db/dbx entry, so no Buffers). */
export function guidString(b: Uint8Array): string {
  const x = (i: number) => HEX[b[i] ?? 0]!
  return (
    `${x(3)}${x(2)}${x(1)}${x(0)}-${x(5)}${x(4)}-${x(7)}${x(6)}-${x(8)}${x(9)}-` +
    `${x(10)}${x(11)}${x(12)}${x(13)}${x(14)}${x(15)}`
  )
}

export interface EfiVariable {
  readonly guid: string
  readonly name: string
  readonly data: Uint8Array
}

/** UEFI_VARIABLE_DATA: VariableName GUID, name length (chars), data length, UTF-16 name, data. */
export function parseVariableData(data: Uint8Array, eventIndex: number): EfiVariable {
  const bad = (why: string): never => {
    throw new EventLogError(
      'event_data',
      `event ${eventIndex}: UEFI_VARIABLE_DATA ${why}`,
      eventIndex,
    )
  }
  if (data.length < 32) bad('is shorter than its header')
  // The 64-bit lengths: anything with a high word is far beyond the (already capped) event data.
  if (u32(data, 20) !== 0 || u32(data, 28) !== 0) bad('has a length over 4 GiB')
  const nameChars = u32(data, 16)
  const dataLen = u32(data, 24)
  if (nameChars > (data.length - 32) / 2) bad('name runs past the event data')
  const nameEnd = 32 + nameChars * 2
  if (dataLen > data.length - nameEnd) bad('data runs past the event data')
  const name = Buffer.from(data.subarray(32, nameEnd)).toString('utf16le').replace(/\0+$/, '')
  return {
    guid: guidString(data.subarray(0, 16)),
    name,
    data: data.subarray(nameEnd, nameEnd + dataLen),
  }
}

export interface EfiSignature {
  /** EFI_CERT_X509 or EFI_CERT_SHA256 (others are kept by type GUID only). */
  readonly type: string
  readonly owner: string
  /** X.509: sha256 of the DER certificate; SHA-256: the hash itself; other types: sha256 of the data. */
  readonly sha256: string
}

/** An EFI_SIGNATURE_LIST array (the content of PK, KEK, db, dbx). */
export function parseSignatureLists(data: Uint8Array, eventIndex: number): EfiSignature[] {
  const bad = (why: string): never => {
    throw new EventLogError(
      'event_data',
      `event ${eventIndex}: EFI_SIGNATURE_LIST ${why}`,
      eventIndex,
    )
  }
  const out: EfiSignature[] = []
  let o = 0
  while (o < data.length) {
    if (data.length - o < 28) bad('header is truncated')
    const type = guidString(data.subarray(o, o + 16))
    const listSize = u32(data, o + 16)
    const headerSize = u32(data, o + 20)
    const sigSize = u32(data, o + 24)
    if (listSize < 28 || listSize > data.length - o) bad(`size ${listSize} runs past the variable`)
    if (headerSize > listSize - 28) bad('header size is larger than the list')
    const body = listSize - 28 - headerSize
    if (sigSize < 16 || body % sigSize !== 0)
      bad(`signature size ${sigSize} does not divide the list`)
    for (let s = o + 28 + headerSize; s < o + listSize; s += sigSize) {
      if (out.length >= MAX_SIGNATURES) bad(`has more than ${MAX_SIGNATURES} signatures`)
      out.push(signature(type, data.subarray(s, s + sigSize)))
    }
    o += listSize
  }
  return out
}

/** Lowercase hex without a Buffer copy (dbx holds hundreds of hashes per log). */
function hexOf(b: Uint8Array): string {
  let out = ''
  for (let i = 0; i < b.length; i++) out += HEX[b[i]!]!
  return out
}

/** EFI_SIGNATURE_DATA: owner GUID then the certificate or hash. */
export function signature(type: string, sig: Uint8Array): EfiSignature {
  const owner = guidString(sig.subarray(0, 16))
  const value = sig.subarray(16)
  const sha256 =
    type === EFI_CERT_SHA256 && value.length === 32
      ? hexOf(value)
      : createHash('sha256').update(value).digest('hex')
  return { type, owner, sha256 }
}
