/**
 * The TPM attestor's round between its challenge and the agent's answer, as data any server
 * replica can resume from (kept by the server: in memory over gRPC, in the datastore over MQTT).
 */
import type { Selector } from '../types.js'
import { TpmAttestationError } from './protocol.js'

/**
 * What the check of the answer needs, kept between the challenge and the answer (in memory over
 * gRPC, in the datastore over MQTT). The credential secret itself is not in it, only its SHA-256:
 * whoever reads the datastore still cannot answer for the TPM.
 */
export interface RoundState {
  readonly v: 1
  readonly akPublic: string
  readonly agentKeyPublic?: string
  readonly agentKeySpki?: string
  readonly nonce: string
  readonly secretSha256: string
  readonly ekHash: string
  readonly selectors: readonly Selector[]
}

export function parseRound(text: string): RoundState {
  const r = parse(text)
  const isHex = (v: unknown) => typeof v === 'string' && /^([0-9a-f]{2})+$/.test(v)
  if (
    r.v !== 1 ||
    !isHex(r.akPublic) ||
    !isHex(r.nonce) ||
    !isHex(r.secretSha256) ||
    r.secretSha256?.length !== 64 ||
    !isHex(r.ekHash) ||
    !Array.isArray(r.selectors) ||
    (r.agentKeyPublic === undefined) === (r.agentKeySpki === undefined)
  )
    throw new TpmAttestationError('response', 'the saved attestation round is malformed')
  return r as RoundState
}

export const fromHex = (h: string) => new Uint8Array(Buffer.from(h, 'hex'))

function parse(text: string): Partial<RoundState> {
  try {
    return JSON.parse(text) as Partial<RoundState>
  } catch (err) {
    throw new TpmAttestationError(
      'response',
      'the saved attestation round is not JSON',
      undefined,
      err,
    )
  }
}
