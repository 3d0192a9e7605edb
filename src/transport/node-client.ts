/**
 * What the agent needs from the server's node API, whatever carries the bytes: gRPC now, MQTT
 * next. Implementations sign requests and verify responses with node-call.ts, so the trust rules
 * (server SVID chained to the current bundle, nonce, timestamp) are the same on every transport.
 */
import type { AgentNodeAttestor } from '../attestors/types.js'
import { SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { CallMethod, CallMethods, Init, Selector, X509SvidMessage } from './proto.js'

export interface AgentAuth {
  /** The agent's SPIFFE ID (from its SVID). */
  readonly spiffeId: string
  /** The current agent SVID chain, DER, leaf first. */
  readonly chain: readonly Uint8Array[]
  readonly signer: Signer
}

export interface AttestResult {
  readonly svid: X509SvidMessage
  readonly bundle: TrustBundle
  readonly reattestable: boolean
  readonly selectors: Selector[]
}

export interface NodeClient {
  /** Runs AttestAgent: sends evidence and a CSR for `signer`, answers challenges, returns the SVID. */
  attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult>
  /**
   * One signed call (RenewAgent, GetBundle, SyncEntries, BatchNewX509SVID, NewJWTSVID). `auth`
   * is required for every method but GetBundle. Failures are NodeCallError.
   */
  call<M extends CallMethod>(
    method: M,
    body: Init<CallMethods[M]['request']>,
    auth?: AgentAuth,
  ): Promise<CallMethods[M]['response']>
  /** Trusts `b` from now on, for the connection and the response envelopes. */
  setBundle(b: TrustBundle): void
  /** The bundle the client now trusts (updated from attestation and GetBundle). */
  currentBundle(): TrustBundle | undefined
  /**
   * Bundles the server pushes (MQTT: the retained signed bundle), already verified against the
   * bundle the client trusted and newer than it. Transports without push leave it out.
   */
  onBundle?(listener: (b: TrustBundle) => void): () => void
  /**
   * Starts connecting (transport loaded, TCP and TLS under way) without making a call, so the
   * set-up overlaps what the caller does first: the agent generates its key in the TPM (several
   * ms the event loop only waits) while the handshake runs. Transports without one leave it out.
   */
  warmUp?(): void
  close(): void
}

/**
 * A failed node API call. `status` is a gRPC code (MQTT carries the same codes), `reason` a stable
 * machine value. The code says whose fault it is: ERR_SERVER_REFUSED only when the server answered
 * with a refusal; ERR_SERVER_UNREACHABLE when no connection could be made; ERR_SERVER_UNTRUSTED
 * when the agent's bundle does not verify what the server presented (a stale bundle, or the wrong
 * server).
 */
export class NodeCallError extends SpiffeEdgeError {
  readonly status: number
  readonly reason: string

  constructor(
    status: number,
    reason: string,
    message: string,
    code:
      | 'ERR_SERVER_REFUSED'
      | 'ERR_SERVER_UNREACHABLE'
      | 'ERR_SERVER_UNTRUSTED' = 'ERR_SERVER_REFUSED',
    remedy?: string,
  ) {
    super(code, message, {
      remedy:
        remedy ??
        (reason === 'banned'
          ? 'the agent is banned: the server operator must evict it before it may attest again'
          : reason === 'not_attested' || reason === 'stale_svid' || reason === 'bad_svid'
            ? 'the server no longer knows this agent identity: attest again (a new join token)'
            : 'the server refused the call; the server log has details'),
    })
    this.status = status
    this.reason = reason
  }
}
