/**
 * The key the agent SVID is issued for, as the TPM attestor names and proves it. A TPM-resident
 * key: its public area goes in the payload and the AK certifies it with the plain nonce. A key held
 * outside the TPM (a PKCS#11 token, "HSM agent key"): its SPKI goes in the payload and the quote's
 * qualifying data commits to that very SPKI (the server needs allow_hsm_agent_key).
 */
import type { KeyObject } from 'node:crypto'
import type { KeyBlob } from '../../tpm/context.js'
import { hsmKeyQualifyingData, TpmAttestationError } from './protocol.js'

/** Anything holding the blob of the TPM key the agent SVID is issued for (e.g. a TpmKey). */
export interface AgentTpmKey {
  readonly blob: KeyBlob
}

export interface AgentKeyOptions {
  /**
   * Exactly one of these, asked at every attestation; it must not take the TPM lock (withTpm):
   * the attestor asks it while queued for that lock.
   */
  readonly agentKey?: (() => AgentTpmKey | Promise<AgentTpmKey>) | undefined
  readonly hsmAgentKey?:
    | (() => { readonly publicKey: KeyObject } | Promise<{ readonly publicKey: KeyObject }>)
    | undefined
}

export type AgentKeyField =
  | { readonly agentKeyPublic: Uint8Array }
  | { readonly agentKeySpki: Uint8Array }

export interface AgentKeyProof {
  /** The quote's qualifying data. */
  readonly qualifying: Uint8Array
  /** The TPM key to load and certify with the nonce; undefined for an HSM key. */
  readonly blob: KeyBlob | undefined
}

export interface AgentKeySource {
  /**
   * The payload's agent-key field, and the TPM key's blob (to keep it loaded until the challenge);
   * remembers an HSM key's SPKI for the challenge.
   */
  payloadField(): Promise<{ readonly field: AgentKeyField; readonly blob?: KeyBlob }>
  /** What the answer to a challenge with this nonce proves the key with. */
  forChallenge(nonce: Uint8Array): Promise<AgentKeyProof>
}

export function agentKeySource(o: AgentKeyOptions): AgentKeySource {
  if ((o.agentKey === undefined) === (o.hsmAgentKey === undefined)) {
    throw new Error('tpmAgentAttestor: give exactly one of agentKey and hsmAgentKey')
  }
  // The HSM key's SPKI this attempt's payload named: the quote must commit to the very same key.
  let sentSpki: Uint8Array | undefined
  return {
    async payloadField() {
      if (o.hsmAgentKey) {
        const spki = (await o.hsmAgentKey()).publicKey.export({ type: 'spki', format: 'der' })
        sentSpki = new Uint8Array(spki)
        return { field: { agentKeySpki: sentSpki } }
      }
      sentSpki = undefined
      const { blob } = await o.agentKey!()
      return { field: { agentKeyPublic: blob.public }, blob }
    },
    async forChallenge(nonce) {
      if (o.hsmAgentKey) {
        if (!sentSpki) {
          throw new TpmAttestationError('challenge', 'a challenge came before the payload was made')
        }
        return { qualifying: hsmKeyQualifyingData(nonce, sentSpki), blob: undefined }
      }
      return { qualifying: nonce, blob: (await o.agentKey!()).blob }
    },
  }
}
