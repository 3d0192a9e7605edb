import type { KeyObject } from 'node:crypto'

/**
 * Node attestor plugins, typed by kind. Each attestor has an agent half (produces evidence,
 * answers challenges) and a server half (verifies, may challenge, names the agent), side by side
 * in src/attestors/<name>/ and sharing their wire types.
 */

export interface Selector {
  readonly type: string
  readonly value: string
}

/** Sends a challenge to the agent and resolves with its response. */
export type Challenger = (challenge: Uint8Array) => Promise<Uint8Array>

export interface AttestationContext {
  readonly trustDomain: string
  readonly now: Date
  /** The key the agent SVID will be issued for (from the CSR, possession already proven). */
  readonly agentPublicKey: KeyObject
  /** Per-agent memory across attestations (e.g. the last quote clock), by agent ID path; values are JSON text. */
  readonly state: AttestorState
}

/** Small persistent per-agent values a server attestor keeps between attestations. */
export interface AttestorState {
  get(agentPath: string): Promise<string | undefined>
  set(agentPath: string, value: string): Promise<void>
}

export interface NodeAttestationResult {
  /** Path of the agent ID under the trust domain: /spire/agent/<attestor>/<unique>. */
  readonly agentPath: string
  readonly selectors: readonly Selector[]
  /** Whether the agent renews by attesting again (TPM) rather than by RenewAgent. */
  readonly canReattest: boolean
}

/** One step of a resumable exchange: the result, or a challenge and the state to resume from. */
export type AttestStep =
  | { readonly result: NodeAttestationResult }
  | { readonly challenge: Uint8Array; readonly state: string }

export interface ServerNodeAttestor {
  readonly kind: 'NodeAttestor'
  readonly name: string
  attest(
    payload: Uint8Array,
    challenge: Challenger,
    ctx: AttestationContext,
  ): Promise<NodeAttestationResult>
  /**
   * The same exchange as steps whose state between rounds is data (JSON text), so any server
   * replica can take the answer (MQTT through shared subscriptions). The state is kept by the
   * server, never sent to the agent, and must hold no secret the answer has to prove (a hash of
   * it instead): a reader of the datastore must not be able to answer for the agent. Attestors
   * that never challenge need neither.
   */
  begin?(payload: Uint8Array, ctx: AttestationContext): Promise<AttestStep>
  resume?(state: string, response: Uint8Array, ctx: AttestationContext): Promise<AttestStep>
}

export interface AgentNodeAttestor {
  readonly kind: 'NodeAttestor'
  readonly name: string
  /**
   * The evidence works once (a join token): whatever could fail after the server accepted it must
   * be done before sending it (the agent writes its key file first, instead of beside the call).
   */
  readonly singleUse?: boolean
  /** The first message's payload. */
  payload(): Promise<Uint8Array>
  /**
   * The first message is built and goes out now: the attestor may use the round trip for work
   * its answer needs whatever the challenge says (the TPM attestor: the EK reference and its
   * policy session). Transports call it once, after payload(); never throws.
   */
  payloadSent?(): void
  /** Answers one server challenge. */
  respond(challenge: Uint8Array): Promise<Uint8Array>
  /**
   * The attempt is over, whatever its outcome: frees what payload() kept for the challenge (the
   * TPM attestor's loaded SRK and AK). Transports call it once per attempt; never throws.
   */
  end?(): Promise<void>
}
