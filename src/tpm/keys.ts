/**
 * The agent's key flows over TpmContext: the EK (persistent when provisioned, else recreated from
 * the TCG template), the SRK, and AK / signing keys created once under the SRK and kept as blobs
 * (wrapped by the TPM, useless elsewhere) so restarts reuse them.
 */
import { TPM_RH } from './constants.js'
import type { KeyBlob, KeyHandle, TpmContext } from './context.js'
import { EK_SLOTS } from './ek.js'
import { keyAlgorithmLabel } from './structures/public.js'
import {
  akTemplate,
  eccEkTemplate,
  type KeyAlgorithm,
  rsaEkTemplate,
  signingKeyTemplate,
} from './templates.js'

export type EkAlgorithm = 'rsa-2048' | 'ecc-p256' | 'ecc-p384'

/**
 * The EK of the given algorithm: the persistent one at its standard handle when present (RSA
 * CreatePrimary takes seconds on real chips), else recreated from the TCG template (RSA, P-256).
 */
export async function openEk(tpm: TpmContext, alg: EkAlgorithm = 'rsa-2048'): Promise<KeyHandle> {
  const slot = EK_SLOTS.find((s) => s.algorithm === alg)!
  const persistent = await tpm.listHandles(0x81000000)
  if (persistent.includes(slot.persistentHandle)) {
    const ek = await tpm.persistentKey(slot.persistentHandle)
    if (keyAlgorithmLabel(ek.public) === alg) return ek
    await ek.dispose()
  }
  if (alg === 'ecc-p384') {
    throw new RangeError(
      'no ECC P-384 EK is persisted and there is no standard template to recreate it',
    )
  }
  return tpm.createPrimary(
    TPM_RH.ENDORSEMENT,
    alg === 'rsa-2048' ? rsaEkTemplate() : eccEkTemplate(),
  )
}

/** The storage root key, shared while held (TpmContext.openSrk); dispose the handle. */
export function openSrk(tpm: TpmContext): Promise<KeyHandle> {
  return tpm.openSrk()
}

/** Creates an attestation key under the SRK; store the blob and load it with loadKey. */
export function createAk(
  tpm: TpmContext,
  srk: KeyHandle,
  alg: KeyAlgorithm = 'ecc-p256',
): Promise<KeyBlob> {
  return tpm.createKey(srk, akTemplate(alg))
}

/** Creates a non-exportable signing key under the SRK (the agent's own key). */
export function createSigningKey(
  tpm: TpmContext,
  srk: KeyHandle,
  alg: KeyAlgorithm = 'ecc-p256',
): Promise<KeyBlob> {
  return tpm.createKey(srk, signingKeyTemplate(alg))
}
