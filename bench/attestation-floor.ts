/**
 * The floor for bench/attestation.ts: the TPM commands one attestation needs, each once, run back
 * to back on the same swtpm with nothing between them (no protocol, no files, no server), timed
 * per step and as a whole. The same commands the agent sends, in its order: the agent key is made
 * under the SRK, the handles and EK certificate are read, the EK public area read, the AK and the
 * agent key loaded, the CSR signed, the SRK flushed (the third slot goes to the EK), the EK
 * referenced, the credential activated (policy session, PolicySecret, activate, flush), the PCRs
 * read and quoted, the agent key certified, the AK and key flushed.
 */
import { randomBytes } from 'node:crypto'
import type { KeyBlob, TpmContext } from '../src/tpm/context.js'
import { makeCredential } from '../src/tpm/credential.js'
import { EK_SLOTS } from '../src/tpm/ek.js'
import { createSigningKey } from '../src/tpm/keys.js'
import type { PcrSelection } from '../src/tpm/structures/pcr.js'

/** One run of the sequence: each step's time and their sum, ms. */
export interface FloorRun {
  readonly total: number
  readonly steps: ReadonlyMap<string, number>
}

/** One run of the sequence with the agent's AK (`akBlob`), the RSA EK and its certificate. */
export async function tpmFloorRun(
  tpm: TpmContext,
  akBlob: KeyBlob,
  selection: PcrSelection,
): Promise<FloorRun> {
  const slot = EK_SLOTS[0]!
  const steps = new Map<string, number>()
  let total = 0
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t = performance.now()
    const r = await fn()
    const ms = performance.now() - t
    total += ms
    steps.set(name, ms)
    return r
  }
  const srk = await step('CreatePrimary (SRK)', () => tpm.openSrk())
  const keyBlob = await step('Create (agent key)', () => createSigningKey(tpm, srk))
  await step('GetCapability (NV, persistent handles)', async () => {
    await tpm.listHandles(0x01000000)
    await tpm.listHandles(0x81000000)
  })
  await step('NV_ReadPublic + NV_Read (EK cert)', () => tpm.nvReadAll(slot.certIndex))
  const area = await step('ReadPublic (EK)', () => tpm.readPublic(slot.persistentHandle))
  const ak = await step('Load (AK)', () => tpm.loadKey(srk, akBlob))
  const key = await step('Load (agent key)', () => tpm.loadKey(srk, keyBlob))
  const digest = new Uint8Array(randomBytes(32))
  await step('Sign (CSR, agent key)', () => tpm.sign(key, digest))
  await step('FlushContext (SRK)', () => srk.dispose())
  const ek = await step('TR_FromTPMPublic (EK)', () =>
    tpm.persistentKeyOf(slot.persistentHandle, area),
  )
  const secret = new Uint8Array(randomBytes(32))
  const cred = makeCredential(ek.public, ak.name, secret)
  const got = await step('ActivateCredential (+ session)', () =>
    tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret),
  )
  if (!Buffer.from(got).equals(Buffer.from(secret))) throw new Error('activation is wrong')
  await ek.dispose()
  const nonce = new Uint8Array(randomBytes(32))
  await step('PCR_Read', () => tpm.pcrRead(selection))
  await step('Quote', () => tpm.quote(ak, nonce, selection))
  await step('Certify (agent key by AK)', () => tpm.certify(key, ak, nonce))
  await step('FlushContext (AK, agent key)', async () => {
    await key.dispose()
    await ak.dispose()
  })
  return { total, steps }
}
