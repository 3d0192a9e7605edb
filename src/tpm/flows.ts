/**
 * The multi-step and attesting TPM commands over one connection: ActivateCredential (with the EK
 * policy session it needs), Quote, Certify and Sign. TpmContext exposes them as methods.
 */
import { SpiffeEdgeError } from '../errors.js'
import type { TpmConnection } from './connection.js'
import { TPM_RH } from './constants.js'
import { TpmClosedError } from './errors.js'
import type { KeyHandle } from './key-handle.js'
import { marshalDigestList, policyOrDigest, policySecretDigest } from './policy.js'
import { marshalPcrSelection, type PcrSelection } from './structures/pcr.js'
import type { TpmPublic } from './structures/public.js'
import { EK_POLICY_C } from './templates.js'

export interface Attestation {
  /** TPMS_ATTEST, the bytes the signature covers. */
  readonly message: Uint8Array
  /** Marshaled TPMT_SIGNATURE. */
  readonly signature: Uint8Array
}

/** The Name of TPM_RH_ENDORSEMENT: its handle, big-endian. */
const ENDORSEMENT_NAME = Uint8Array.from([0x40, 0x00, 0x00, 0x0b])

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/**
 * Which policy branches satisfy the EK's authPolicy: plain PolicySecret(endorsement) (templates
 * L-1, L-2; undefined here), or that inside a PolicyOR (high-range templates). Anything else is
 * refused up front, before a session is spent on it.
 */
function ekPolicyBranches(ek: TpmPublic): Uint8Array[] | undefined {
  const nameAlg = ek.nameAlg
  const secretBranch = policySecretDigest(nameAlg, ENDORSEMENT_NAME)
  if (sameBytes(ek.authPolicy, secretBranch)) return undefined
  const otherBranch = EK_POLICY_C.get(nameAlg)
  if (
    otherBranch &&
    sameBytes(ek.authPolicy, policyOrDigest(nameAlg, [secretBranch, otherBranch]))
  ) {
    return [secretBranch, otherBranch]
  }
  throw new SpiffeEdgeError('ERR_TPM_UNSUPPORTED', "the EK's authPolicy is not a TCG EK policy", {
    remedy: 'use an EK created from a TCG EK template (L-1, L-2 or the high-range ones)',
  })
}

/**
 * A policy session that satisfies the EK's authPolicy (PolicySecret(endorsement), inside a
 * PolicyOR for the high-range templates), owned by whoever started it: dispose() flushes it (a
 * session from before a reconnect is gone already). It depends on the EK's public area only, so
 * it can be started before the challenge that needs it arrives.
 */
export interface EkPolicySession extends AsyncDisposable {
  readonly handle: number
  /** Still usable: not disposed, and started on the current connection. */
  readonly current: boolean
  dispose(): Promise<void>
}

export async function startEkPolicySession(
  conn: TpmConnection,
  ekPublic: TpmPublic,
): Promise<EkPolicySession> {
  const orBranches = ekPolicyBranches(ekPublic)
  const started = await conn.run((c) => c.startPolicySession(ekPublic.nameAlg))
  const gen = conn.generation
  let flushed: Promise<void> | undefined
  const session: EkPolicySession = {
    handle: started.handle,
    get current() {
      return !flushed && conn.generation === gen
    },
    dispose() {
      flushed ??= conn.flushSession(started.handle, gen)
      return flushed
    },
    [Symbol.asyncDispose]: () => session.dispose(),
  }
  try {
    await conn.run(async (c) => {
      conn.checkGeneration(gen)
      return c.policySecret(started.handle, TPM_RH.ENDORSEMENT)
    })
    if (orBranches) {
      const list = marshalDigestList(orBranches)
      await conn.run(async (c) => {
        conn.checkGeneration(gen)
        return c.policyOr(started.handle, list)
      })
    }
    return session
  } catch (err) {
    await session.dispose().catch(() => undefined)
    throw err
  }
}

/**
 * TPM2_ActivateCredential: the EK (under a PolicySecret(endorsement) session, as the TCG EK
 * policy demands) decrypts the credential only if it was made for this AK's Name. With `session`
 * (startEkPolicySession, for this EK) it is used and left to its owner; else one is made here and
 * flushed.
 */
export async function activateCredential(
  conn: TpmConnection,
  ak: KeyHandle,
  ek: KeyHandle,
  credentialBlob: Uint8Array,
  encryptedSecret: Uint8Array,
  session?: EkPolicySession,
): Promise<Uint8Array> {
  const a = conn.handleFor(ak)
  const e = conn.handleFor(ek)
  if (session) {
    if (!session.current) {
      throw new TpmClosedError(
        'the EK policy session is from before a TPM reconnect or was flushed',
        'start a new one (startEkPolicySession)',
      )
    }
    return conn.run(
      (c) => c.activateCredential(a, e, session.handle, credentialBlob, encryptedSecret),
      [ak, ek],
    )
  }
  await using own = await startEkPolicySession(conn, ek.public)
  return await conn.run(
    (c) => c.activateCredential(a, e, own.handle, credentialBlob, encryptedSecret),
    [ak, ek],
  )
}

/** TPM2_Quote over a PCR selection, with the AK's own scheme; nonce is the qualifying data. */
export async function quote(
  conn: TpmConnection,
  ak: KeyHandle,
  nonce: Uint8Array,
  selection: PcrSelection,
): Promise<Attestation> {
  const a = conn.handleFor(ak)
  const sel = marshalPcrSelection(selection)
  const r = await conn.run((c) => c.quote(a, nonce, sel), [ak])
  return { message: r.quoted, signature: r.signature }
}

/** TPM2_Certify: the AK attests that `key` lives in this TPM (its Name is in the message). */
export async function certify(
  conn: TpmConnection,
  key: KeyHandle,
  ak: KeyHandle,
  nonce: Uint8Array,
): Promise<Attestation> {
  const k = conn.handleFor(key)
  const a = conn.handleFor(ak)
  const r = await conn.run((c) => c.certify(k, a, nonce), [key, ak])
  return { message: r.certifyInfo, signature: r.signature }
}

/**
 * Signs with a key whose authPolicy is PolicyPCR(selection) over `pcrDigest` (the hash of the PCR
 * values it was made for, policy.ts): a policy session, PolicyPCR with that digest (the TPM
 * refuses with TPM_RC_VALUE when the current PCRs differ), then Sign in the session. The session
 * is owned here and flushed in `finally`, also after a reconnect (it died with the old context).
 */
export async function signWithPcrPolicy(
  conn: TpmConnection,
  key: KeyHandle,
  digest: Uint8Array,
  selection: PcrSelection,
  pcrDigest: Uint8Array,
): Promise<Uint8Array> {
  const k = conn.handleFor(key)
  const sel = marshalPcrSelection(selection)
  const session = await conn.run((c) => c.startPolicySession(key.public.nameAlg), [key])
  const gen = conn.generation
  try {
    await conn.run(async (c) => {
      conn.checkGeneration(gen)
      return c.policyPcr(session.handle, pcrDigest, sel)
    })
    return await conn.run(
      async (c) => {
        conn.checkGeneration(gen)
        return c.sign(k, digest, session.handle)
      },
      [key],
    )
  } finally {
    await conn.flushSession(session.handle, gen)
  }
}

/** Signs a digest with an unrestricted signing key; returns a marshaled TPMT_SIGNATURE. */
export async function sign(
  conn: TpmConnection,
  key: KeyHandle,
  digest: Uint8Array,
): Promise<Uint8Array> {
  const k = conn.handleFor(key)
  return conn.run((c) => c.sign(k, digest), [key])
}
