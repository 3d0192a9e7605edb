/**
 * The EK as the agent half of the TPM attestor sees it: its public area (read at its persistent
 * handle, else recreated) and the certificates NV holds.
 */
import type { PublicArea, TpmContext } from '../../tpm/context.js'
import { type EkSlot, extractDerCertificate } from '../../tpm/ek.js'
import { openEk } from '../../tpm/keys.js'
import { keyAlgorithmLabel } from '../../tpm/structures/public.js'

/** A TPMT_PUBLIC as the TPM2B_PUBLIC the wire carries. */
export function tpm2b(raw: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + raw.length)
  out[0] = raw.length >> 8
  out[1] = raw.length & 0xff
  out.set(raw, 2)
  return out
}

/** Certificates concatenated in one NV index (padding after the last one is ignored). */
export function splitDerCertificates(nv: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = []
  let rest = nv
  while (rest.length > 1 && rest[0] === 0x30) {
    const der = extractDerCertificate(rest)
    out.push(der)
    rest = rest.subarray(der.length)
  }
  return out
}

/** The EK's public area, and whether it is the persistent one (then respond needs no re-read). */
export interface EkSeen {
  readonly slot: EkSlot
  readonly area: PublicArea
  readonly persistent: boolean
}

/** The EK of this slot: read at its persistent handle (one command), else recreated. */
export async function seeEk(
  tpm: TpmContext,
  s: EkSlot,
  persistentHandles: readonly number[],
  persist: boolean,
): Promise<EkSeen> {
  if (persistentHandles.includes(s.persistentHandle)) {
    const area = await tpm.readPublic(s.persistentHandle)
    if (keyAlgorithmLabel(area.public) === s.algorithm) return { slot: s, area, persistent: true }
  }
  await using ek = await openEk(tpm, s.algorithm)
  if (persist && !ek.persistent) await tpm.evictControl(ek, s.persistentHandle)
  const area = { public: ek.public, raw: tpm2b(ek.public.raw), name: ek.name }
  return { slot: s, area, persistent: ek.persistent }
}
