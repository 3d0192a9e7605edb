/**
 * Authentication of signed node API requests: the envelope's timestamp, the agent SVID chain
 * (verified against our own bundle), the node record (attested, not banned), the SVID serial (the
 * one we last issued, or the one it replaces until the new one is first used), the signature, and
 * only then the replay cache. Chain validation results are cached by content (agent-chain-cache.ts);
 * everything else is checked on every request. The replay cache is in the datastore (seen_nonces),
 * shared by every server process on it, so a request replayed to another replica is refused too.
 */
import { isSpiffeEdgeError } from '../errors.js'
import {
  AuthError,
  checkTimestamp,
  MAX_CLOCK_SKEW_MS,
  requestSigningString,
  verifySignature,
} from '../transport/envelope.js'
import type { SignedRequest } from '../transport/proto.js'
import { AgentChainCache, type ValidatedAgentChain } from './agent-chain-cache.js'
import type { AttestedNode } from './datastore/types.js'
import { NodeApiError, type NodeApiOptions, Status } from './node-api-common.js'

type AuthOptions = Pick<NodeApiOptions, 'ca' | 'datastore' | 'clock' | 'trustDomain'>

/** Serials compared as hex without leading zeros (the CA and X.509 parsers differ there). */
function normalSerial(s: string): string {
  return s.toLowerCase().replace(/^0+/, '')
}

export class RequestAuthenticator {
  private readonly o: AuthOptions
  /** Validated agent chains by content hash (bundle included); see agent-chain-cache.ts. */
  readonly chains = new AgentChainCache()

  constructor(o: AuthOptions) {
    this.o = o
  }

  /** Checks who signed the request; returns the agent's node record. */
  async authenticate(req: SignedRequest): Promise<AttestedNode> {
    const now = this.o.clock.now().getTime()
    checkTimestamp(req.timestampMs, now)
    if (req.agentChain.length === 0) {
      throw new AuthError(
        'no_svid',
        'request carries no agent SVID',
        'attest first, then sign requests with the agent SVID key',
      )
    }
    let validated: ValidatedAgentChain
    try {
      validated = this.chains.validate(
        req.agentChain,
        this.o.trustDomain,
        this.o.ca.bundle().x509Bundle(),
        now,
      )
    } catch (err) {
      throw new AuthError(
        'bad_svid',
        `agent SVID does not verify: ${(err as Error).message}`,
        'the agent must re-attest (its SVID is from another CA or expired)',
      )
    }
    const agentId = validated.spiffeId.toString()
    const node = await this.o.datastore.getAttestedNode(agentId)
    if (!node) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'not_attested',
        `agent ${agentId} is not attested`,
        'attest the agent again',
      )
    }
    if (node.banned) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'banned',
        `agent ${agentId} is banned`,
        'evict the agent to let it attest again',
      )
    }
    const serial = normalSerial(validated.serial)
    const current = normalSerial(node.certSerial)
    const previous = node.previousCertSerial ? normalSerial(node.previousCertSerial) : undefined
    if (serial !== current && serial !== previous) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'stale_svid',
        'this agent SVID was superseded',
        'use the newest agent SVID, or re-attest',
      )
    }
    const leafKey = validated.leafKey
    const data = requestSigningString(req.method, agentId, req.timestampMs, req.nonce, req.body)
    if (!verifySignature(leafKey, data, req.signature)) {
      throw new AuthError(
        'signature',
        'request signature does not verify with the agent SVID key',
        'sign with the key of the SVID you send',
      )
    }
    // Only after the signature checks out: otherwise anyone could burn an agent's nonces.
    await this.checkReplay(req.nonce, now)
    // The new SVID is in use: the replaced one stops working (persisted, like the renewal).
    if (serial === current && previous !== undefined)
      return this.o.datastore.updateAttestedNode(agentId, { previousCertSerial: '' })
    return node
  }

  /** The nonce, once across every server on this datastore while its timestamp can pass. */
  private async checkReplay(nonce: Uint8Array, now: number): Promise<void> {
    if (nonce.length < 16 || nonce.length > 64)
      throw new AuthError('nonce', 'request nonce must be 16 to 64 bytes', 'send 16 random bytes')
    let prior: unknown
    try {
      prior = await this.o.datastore.claimNonce(
        `req:${Buffer.from(nonce).toString('base64')}`,
        '',
        now + 2 * MAX_CLOCK_SKEW_MS,
        now,
      )
    } catch (err) {
      if (isSpiffeEdgeError(err) && err.code === 'ERR_DATASTORE_BUSY')
        throw new AuthError('busy', 'too many requests in the replay window', 'retry later')
      throw err
    }
    if (prior !== undefined)
      throw new AuthError(
        'replay',
        'this request was already received',
        'send a fresh nonce per request',
      )
  }
}
