/**
 * Arrange steps for the tests that drive the TPM server attestor directly: in-memory attestor
 * state, the attestation context for an agent key, the JSON wire messages (to tamper with), and
 * the check on a refusal's reason.
 */
import assert from 'node:assert/strict'
import { TpmAttestationError } from '../../src/attestors/tpm/protocol.js'
import type { AttestorState } from '../../src/attestors/types.js'
import type { Signer } from '../../src/keymanager/types.js'

/** One payload, challenge or response as its JSON object. */
export type Wire = Record<string, unknown>
export const decodeWire = (b: Uint8Array) => JSON.parse(Buffer.from(b).toString()) as Wire
export const encodeWire = (o: Wire) => new Uint8Array(Buffer.from(JSON.stringify(o)))

/** Attestor state kept in a map the test can read. */
export function memoryState(): AttestorState & { map: Map<string, string> } {
  const map = new Map<string, string>()
  return {
    map,
    get: async (p) => map.get(p),
    set: async (p, v) => {
      map.set(p, v)
    },
  }
}

/** What the server attestor is told about an attestation by an agent holding `key`. */
export const attestContext = (key: Signer, state: AttestorState) => ({
  trustDomain: 'example.org',
  now: new Date(),
  agentPublicKey: key.publicKey,
  state,
})

/** An assert.rejects check: a TPM attestation refused for `reason` (and `detail`, when given). */
export const rejectsWith = (reason: string, detail?: string) => (e: unknown) => {
  assert.ok(e instanceof TpmAttestationError, String(e))
  assert.equal(e.code, 'ERR_ATTESTATION_FAILED')
  assert.equal(e.reason, reason, e.message)
  if (detail) assert.equal(e.detail, detail, e.message)
  return true
}

/** Answers a fresh challenge (a new activation) but with the quote of the `recorded` response. */
export const replayQuote =
  (respond: (c: Uint8Array) => Promise<Uint8Array>, recorded: Uint8Array) =>
  async (c: Uint8Array): Promise<Uint8Array> => {
    const fresh = decodeWire(await respond(c))
    const old = decodeWire(recorded)
    return encodeWire({
      ...fresh,
      quote_message: old.quote_message,
      quote_signature: old.quote_signature,
      pcr_values: old.pcr_values,
    })
  }
