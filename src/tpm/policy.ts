/**
 * Policy digests computed in software (TPM 2.0 part 3, 23.x), so the agent can tell which
 * session commands satisfy an EK's authPolicy before it touches the TPM.
 */
import { createHash } from 'node:crypto'
import { HASH_ALGS } from './constants.js'
import { TpmStructureError } from './errors.js'
import { marshalPcrSelection, type PcrSelection, type PcrValues } from './structures/pcr.js'
import { Writer } from './structures/writer.js'

const TPM_CC_POLICY_SECRET = 0x00000151
const TPM_CC_POLICY_OR = 0x00000171
const TPM_CC_POLICY_PCR = 0x0000017f

function hashName(alg: number): { name: string; size: number } {
  const h = HASH_ALGS.get(alg)
  if (!h) throw new TpmStructureError(`unsupported policy hash 0x${alg.toString(16)}`)
  return h
}

/** PolicySecret(authEntity) with an empty policyRef, from an empty policy. */
export function policySecretDigest(alg: number, authEntityName: Uint8Array): Uint8Array {
  const h = hashName(alg)
  const step = createHash(h.name)
    .update(new Uint8Array(h.size))
    .update(new Writer().u32(TPM_CC_POLICY_SECRET).finish())
    .update(authEntityName)
    .digest()
  return new Uint8Array(createHash(h.name).update(step).digest())
}

/** PolicyOR over branch digests (it resets the running digest to zero first). */
export function policyOrDigest(alg: number, branches: readonly Uint8Array[]): Uint8Array {
  const h = hashName(alg)
  const hash = createHash(h.name)
    .update(new Uint8Array(h.size))
    .update(new Writer().u32(TPM_CC_POLICY_OR).finish())
  for (const b of branches) hash.update(b)
  return new Uint8Array(hash.digest())
}

/** Marshals a TPML_DIGEST. */
export function marshalDigestList(digests: readonly Uint8Array[]): Uint8Array {
  const w = new Writer().u32(digests.length)
  for (const d of digests) w.sized(d)
  return w.finish()
}

/**
 * TPM2_PolicyPCR's pcrDigest: the hash (policy hash `alg`) of the selected PCR values, concatenated
 * in selection order (banks as listed, PCRs ascending). A selected PCR without a value is an error.
 */
export function pcrValuesDigest(
  alg: number,
  selection: PcrSelection,
  values: PcrValues,
): Uint8Array {
  const h = hashName(alg)
  const hash = createHash(h.name)
  for (const { hashAlg, pcrs } of selection) {
    for (const p of [...pcrs].sort((a, b) => a - b)) {
      const v = values.get(hashAlg)?.get(p)
      if (!v) throw new TpmStructureError(`no value for PCR ${p} of bank 0x${hashAlg.toString(16)}`)
      hash.update(v)
    }
  }
  return new Uint8Array(hash.digest())
}

/**
 * PolicyPCR(selection, values) from an empty policy (TPM 2.0 part 3, 23.7): H(0…0 ||
 * TPM_CC_PolicyPCR || TPML_PCR_SELECTION || pcrDigest). What `tpm2_createpolicy --policy-pcr`
 * prints, and the authPolicy of an object only a boot with those PCR values may use.
 */
export function policyPcrDigest(
  alg: number,
  selection: PcrSelection,
  values: PcrValues,
): Uint8Array {
  const h = hashName(alg)
  const sorted = selection.map((s) => ({
    hashAlg: s.hashAlg,
    pcrs: [...s.pcrs].sort((a, b) => a - b),
  }))
  return new Uint8Array(
    createHash(h.name)
      .update(new Uint8Array(h.size))
      .update(new Writer().u32(TPM_CC_POLICY_PCR).finish())
      .update(marshalPcrSelection(sorted))
      .update(pcrValuesDigest(alg, sorted, values))
      .digest(),
  )
}
