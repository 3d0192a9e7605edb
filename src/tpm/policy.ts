/**
 * Policy digests computed in software (TPM 2.0 part 3, 23.x), so the agent can tell which
 * session commands satisfy an EK's authPolicy before it touches the TPM.
 */
import { createHash } from 'node:crypto'
import { HASH_ALGS } from './constants.js'
import { TpmStructureError } from './errors.js'
import { Writer } from './structures/writer.js'

const TPM_CC_POLICY_SECRET = 0x00000151
const TPM_CC_POLICY_OR = 0x00000171

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
