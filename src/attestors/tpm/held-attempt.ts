/**
 * What one TPM attestation attempt keeps between its payload and its challenge: the loaded AK and
 * agent key, and what it prepared for the answer while the payload travelled (the persistent EK's
 * reference and the EK's policy session, neither decided by the challenge). One owner at a time:
 * the attempt, then the answer that takes it over; every function here runs under the TPM lock.
 */
import type { EkPolicySession, KeyBlob, KeyHandle, TpmContext } from '../../tpm/context.js'
import type { EkSeen } from './agent-ek.js'

/** Made during the round trip (payloadSent). */
export interface Prepared {
  /** The persistent EK's reference (no object slot); undefined for a recreated EK. */
  readonly ek: KeyHandle | undefined
  readonly session: EkPolicySession
}

export interface Held {
  readonly ak: KeyHandle
  readonly key: KeyHandle | undefined
  readonly keyBlob: KeyBlob | undefined
  readonly timer: NodeJS.Timeout
  readonly withdraw: () => void
  prepared?: Prepared | undefined
}

/**
 * The EK reference (persistent EK only: a recreated one would take a third object slot while the
 * AK and key are held) and a policy session that satisfies its authPolicy.
 */
export async function prepareAnswer(tpm: TpmContext, ek: EkSeen): Promise<Prepared> {
  const ref = ek.persistent
    ? await tpm.persistentKeyOf(ek.slot.persistentHandle, ek.area)
    : undefined
  try {
    return { ek: ref, session: await tpm.startEkPolicySession(ek.area.public) }
  } catch (err) {
    await ref?.dispose()
    throw err
  }
}

/** Still usable: the session and the EK reference are from the current connection. */
export function stillUsable(tpm: TpmContext, p: Prepared): boolean {
  return p.session.current && (!p.ek || tpm.isLoaded(p.ek))
}

export async function disposePrepared(p: Prepared | undefined): Promise<void> {
  if (!p) return
  try {
    await p.session.dispose()
  } finally {
    await p.ek?.dispose()
  }
}

/** Flushes everything the attempt holds. */
export async function releaseHeld(h: Held | undefined): Promise<void> {
  if (!h) return
  const p = h.prepared
  h.prepared = undefined
  try {
    await disposePrepared(p)
    await h.key?.dispose()
  } finally {
    await h.ak.dispose()
  }
}
