import { TPM_CAP } from '../constants.js'
import { TpmStructureError } from '../errors.js'
import { Reader } from './reader.js'

/** Parses TPMS_CAPABILITY_DATA holding TPML_TAGGED_TPM_PROPERTY into property → value. */
export function parseTpmProperties(bytes: Uint8Array): Map<number, number> {
  const r = new Reader(bytes, 'TPMS_CAPABILITY_DATA')
  const cap = r.u32('capability')
  if (cap !== TPM_CAP.TPM_PROPERTIES) {
    throw new TpmStructureError(
      `TPMS_CAPABILITY_DATA: expected TPM properties, got 0x${cap.toString(16)}`,
    )
  }
  const count = r.u32('count')
  // MAX_TPM_PROPERTIES is well under 256 for any buffer size a TPM can return.
  if (count > 256) throw new TpmStructureError(`TPML_TAGGED_TPM_PROPERTY: count ${count} too large`)
  const out = new Map<number, number>()
  for (let i = 0; i < count; i++) out.set(r.u32('property'), r.u32('value'))
  r.end()
  return out
}

/** Parses TPMS_CAPABILITY_DATA holding TPML_HANDLE. */
export function parseHandles(bytes: Uint8Array): number[] {
  const r = new Reader(bytes, 'TPMS_CAPABILITY_DATA')
  const cap = r.u32('capability')
  if (cap !== TPM_CAP.HANDLES) {
    throw new TpmStructureError(`TPMS_CAPABILITY_DATA: expected handles, got 0x${cap.toString(16)}`)
  }
  const count = r.u32('count')
  if (count > 256) throw new TpmStructureError(`TPML_HANDLE: count ${count} too large`)
  const out: number[] = []
  for (let i = 0; i < count; i++) out.push(r.u32('handle'))
  r.end()
  return out
}

/** Four bytes of a property value as the ASCII the TPM packs into it (NULs dropped). */
export function propertyString(value: number): string {
  let s = ''
  for (const shift of [24, 16, 8, 0]) {
    const c = (value >>> shift) & 0xff
    if (c !== 0) s += String.fromCharCode(c)
  }
  return s
}
