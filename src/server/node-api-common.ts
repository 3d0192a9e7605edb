/**
 * What every part of the node API shares: the status codes the envelope carries, the coded
 * NodeApiError, the options NodeApi is built from, and CSR parsing (attestation and issuance both
 * take the SVID key from a CSR, and refuse the same way when it is bad).
 */
import type { KeyObject } from 'node:crypto'
import type { ServerNodeAttestor } from '../attestors/types.js'
import { SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import { publicKeyFromCsr } from '../spiffe/csr.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { AttestAgentRequest, AttestAgentResponse } from '../transport/proto.js'
import type { CaManager, Clock } from './ca.js'
import type { Datastore } from './datastore/types.js'

/** gRPC status codes (the envelope carries them over any transport). */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const

export class NodeApiError extends SpiffeEdgeError {
  readonly status: number
  readonly reason: string

  constructor(status: number, reason: string, message: string, remedy: string) {
    super('ERR_AUTH', message, { remedy })
    this.status = status
    this.reason = reason
  }
}

/** The server's own SVID, used for TLS and to sign responses. */
export interface ServerIdentity {
  readonly chain: readonly Uint8Array[]
  readonly signer: Signer
}

export interface NodeApiOptions {
  readonly trustDomain: TrustDomain
  readonly datastore: Datastore
  readonly ca: CaManager
  readonly attestors: ReadonlyMap<string, ServerNodeAttestor>
  readonly identity: () => ServerIdentity
  readonly clock: Clock
  readonly agentTtlSeconds: number
  readonly defaultX509SvidTtlSeconds: number
  readonly defaultJwtSvidTtlSeconds: number
  /** `iss` of minted JWT-SVIDs (server.jwt_issuer); undefined: none. */
  readonly jwtIssuer?: string | undefined
  /** Attestations per second per source (token bucket, burst of the same size). */
  readonly attestRatePerSecond: number
  readonly log?:
    | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
    | undefined
}

/** The transport's side of an AttestAgent exchange. */
export interface AttestStream {
  /** The next request message from the agent (rejects when the stream ends). */
  receive(): Promise<AttestAgentRequest>
  send(m: AttestAgentResponse): Promise<void>
  /** Where the call comes from (for rate limiting). */
  readonly peer: string
}

/** The public key of a PKCS#10 CSR, or a coded INVALID_ARGUMENT refusal. */
export async function csrKey(csr: Uint8Array | undefined): Promise<KeyObject> {
  if (!csr || csr.length === 0) {
    throw new NodeApiError(
      Status.INVALID_ARGUMENT,
      'malformed',
      'a CSR is required',
      'send a PKCS#10 CSR for the SVID key',
    )
  }
  try {
    return await publicKeyFromCsr(csr)
  } catch (err) {
    throw new NodeApiError(
      Status.INVALID_ARGUMENT,
      'bad_csr',
      (err as Error).message,
      'send a DER PKCS#10 CSR signed by its key',
    )
  }
}
