/**
 * The agent-facing node API, transport-neutral: AttestAgent as a challenge/response exchange, and
 * every other call as a signed envelope (src/transport/envelope.ts) that the gRPC adapter (and
 * later MQTT) only carries. Trust decisions made here:
 *  - who an agent is: only a node attestor plugin says (node-attestation.ts); banned agents are refused;
 *  - that a request comes from that agent: a signature by the key of its current agent SVID, whose
 *    chain must verify against our own bundle and whose serial must be the one we last issued
 *    (request-auth.ts);
 *  - which SVIDs it may get: only for entries authorized to it (authorized-entries.ts), issued by
 *    svid-issuance.ts.
 * This file owns the call loop: decode, authenticate, dispatch, and a signed response for every
 * outcome. Failures are coded (status + reason) and nothing is written on a failed call.
 */
import { isSpiffeEdgeError } from '../errors.js'
import { AuthError, responseSigningString } from '../transport/envelope.js'
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  type CallMethod,
  codec,
  isCallMethod,
  ProtocolError,
  type SignedRequest,
  type SignedResponse,
} from '../transport/proto.js'
import { authorizedEntries, federatedBundlesFor, syncEntries } from './authorized-entries.js'
import type { AttestedNode, RegistrationEntry } from './datastore/types.js'
import { type AttestStream, NodeApiError, type NodeApiOptions, Status } from './node-api-common.js'
import { NodeAttestation } from './node-attestation.js'
import { RequestAuthenticator } from './request-auth.js'
import { batchNewX509Svid, newJwtSvid, renewAgent } from './svid-issuance.js'

export {
  type AttestStream,
  NodeApiError,
  type NodeApiOptions,
  type ServerIdentity,
  Status,
} from './node-api-common.js'

const UNAUTHENTICATED_METHODS: ReadonlySet<CallMethod> = new Set(['GetBundle'])

export class NodeApi {
  private readonly o: NodeApiOptions
  private readonly auth: RequestAuthenticator
  private readonly attestation: NodeAttestation
  private readonly aliasParent: string

  constructor(o: NodeApiOptions) {
    this.o = o
    const serverId = `spiffe://${o.trustDomain.name}/spire/server`
    this.auth = new RequestAuthenticator(o)
    this.attestation = new NodeAttestation(o, serverId)
    this.aliasParent = serverId
  }

  attestAgent(stream: AttestStream): Promise<void> {
    return this.attestation.attest(stream)
  }

  /**
   * AttestAgent as steps, for transports whose frames may reach any replica (MQTT): the params of
   * attempt `key`; a challenge's round is kept in the datastore, not in this process.
   */
  attestBegin(
    peer: string,
    key: string,
    first: AttestAgentRequest,
    carry?: string,
  ): Promise<AttestAgentResponse> {
    return this.attestation.begin(peer, key, first, carry)
  }

  /** The answer to round `round` of attempt `key`, on whichever replica it reaches (once). */
  attestResume(
    peer: string,
    key: string,
    round: number,
    answer: AttestAgentRequest,
  ): Promise<{ response: AttestAgentResponse; carry?: string | undefined }> {
    return this.attestation.resume(peer, key, round, answer)
  }

  /** Entries this agent may issue: its own children, and descendants of node aliases it matches. */
  authorizedEntries(agent: AttestedNode): Promise<RegistrationEntry[]> {
    return authorizedEntries(this.o.datastore, this.aliasParent, agent)
  }

  /** Handles one signed request; always returns a signed response (errors included). */
  async call(requestBytes: Uint8Array): Promise<SignedResponse> {
    let req: SignedRequest | undefined
    try {
      req = codec.signedRequest.decode(requestBytes)
      if (!isCallMethod(req.method)) {
        throw new NodeApiError(
          Status.INVALID_ARGUMENT,
          'unknown_method',
          `unknown method '${req.method}'`,
          'upgrade the agent or server',
        )
      }
      const agent = UNAUTHENTICATED_METHODS.has(req.method)
        ? undefined
        : await this.auth.authenticate(req)
      const body = await this.dispatch(req.method, req.body, agent)
      return await this.respond(req, body, undefined)
    } catch (err) {
      const e = toNodeApiError(err)
      if (!e)
        this.o.log?.('warn', 'node API call failed', {
          method: req?.method,
          error: (err as Error).message,
        })
      return this.respond(
        req ?? {
          method: '',
          body: new Uint8Array(),
          agentChain: [],
          timestampMs: 0,
          nonce: new Uint8Array(),
          signature: new Uint8Array(),
        },
        new Uint8Array(),
        e ?? new NodeApiError(Status.INTERNAL, 'internal', 'internal error', 'see the server log'),
      )
    }
  }

  private respond(
    req: SignedRequest,
    body: Uint8Array,
    err: NodeApiError | undefined,
  ): Promise<SignedResponse> {
    return this.sign(req.method, req.nonce, body, err)
  }

  /**
   * A response signed by the server SVID for `nonce`: what every transport sends, so a relay
   * (an MQTT broker) cannot forge an answer or a refusal. The MQTT listener signs AttestAgent
   * frames and the bundle push with it too (methods "AttestAgent", "BundlePush").
   */
  async sign(
    method: string,
    nonce: Uint8Array,
    body: Uint8Array,
    err: NodeApiError | undefined,
  ): Promise<SignedResponse> {
    const id = this.o.identity()
    const timestampMs = this.o.clock.now().getTime()
    const error = { code: err?.status ?? 0, message: err?.message ?? '', reason: err?.reason ?? '' }
    const signature = await id.signer.sign(
      responseSigningString(method, timestampMs, nonce, body, error),
    )
    return {
      body,
      serverChain: [...id.chain],
      timestampMs,
      requestNonce: nonce,
      signature,
      errorCode: error.code,
      errorMessage: error.message,
      errorReason: error.reason,
    }
  }

  private async dispatch(
    method: CallMethod,
    body: Uint8Array,
    agent: AttestedNode | undefined,
  ): Promise<Uint8Array> {
    const entries = () => this.authorizedEntries(agent!)
    switch (method) {
      case 'GetBundle': {
        const b = this.o.ca.bundle()
        return codec
          .response('GetBundle')
          .encode({ bundle: b.toSpiffeJson(), sequence: b.sequence })
      }
      case 'GetFederatedBundles':
        return codec
          .response('GetFederatedBundles')
          .encode(
            await federatedBundlesFor(this.o.datastore, await entries(), this.o.trustDomain.name),
          )
      case 'RenewAgent':
        return codec
          .response('RenewAgent')
          .encode(await renewAgent(this.o, agent!, codec.request('RenewAgent').decode(body)))
      case 'SyncEntries':
        return codec
          .response('SyncEntries')
          .encode(
            await syncEntries(this.o.datastore, entries, codec.request('SyncEntries').decode(body)),
          )
      case 'BatchNewX509SVID':
        return codec
          .response('BatchNewX509SVID')
          .encode(
            await batchNewX509Svid(this.o, entries, codec.request('BatchNewX509SVID').decode(body)),
          )
      case 'NewJWTSVID':
        return codec
          .response('NewJWTSVID')
          .encode(await newJwtSvid(this.o, entries, codec.request('NewJWTSVID').decode(body)))
    }
  }
}

/** Known failures become coded refusals; anything else is undefined (an internal error, logged). */
export function toNodeApiError(err: unknown): NodeApiError | undefined {
  if (err instanceof NodeApiError) return err
  if (err instanceof AuthError)
    return new NodeApiError(Status.UNAUTHENTICATED, err.reason, err.message, err.remedy ?? '')
  if (err instanceof ProtocolError)
    return new NodeApiError(Status.INVALID_ARGUMENT, 'malformed', err.message, err.remedy ?? '')
  if (
    isSpiffeEdgeError(err) &&
    (err.code === 'ERR_SPIFFE_ID_INVALID' || err.code === 'ERR_DATASTORE_INVALID')
  )
    return new NodeApiError(Status.INVALID_ARGUMENT, 'invalid', err.message, err.remedy ?? '')
  return undefined
}
