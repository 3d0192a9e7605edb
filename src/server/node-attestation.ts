/**
 * AttestAgent: rate limiting per source, the challenge/response exchange with a node attestor
 * plugin (bounded rounds), agent ID checks, bans, and the first agent SVID plus its node record.
 * Only the plugin decides who the agent is; nothing is written unless attestation succeeds.
 */
import type { ServerNodeAttestor } from '../attestors/types.js'
import { isSpiffeEdgeError } from '../errors.js'
import { SpiffeId } from '../spiffe/id.js'
import type { Selector } from '../transport/proto.js'
import type { AttestedNode } from './datastore/types.js'
import {
  type AttestStream,
  csrKey,
  NodeApiError,
  type NodeApiOptions,
  Status,
} from './node-api-common.js'
import { svidMessage } from './svid-issuance.js'

const MAX_CHALLENGE_ROUNDS = 8

/** Per-key token buckets; idle buckets are dropped once there are many (bounded memory). */
class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>()
  private readonly rate: number

  constructor(rate: number) {
    this.rate = rate
  }

  take(key: string, nowMs: number): boolean {
    const b = this.buckets.get(key) ?? { tokens: this.rate, at: nowMs }
    b.tokens = Math.min(this.rate, b.tokens + ((nowMs - b.at) / 1000) * this.rate)
    b.at = nowMs
    this.buckets.set(key, b)
    if (this.buckets.size > 10_000) {
      for (const [k, v] of this.buckets) if (nowMs - v.at > 60_000) this.buckets.delete(k)
    }
    if (b.tokens < 1) return false
    b.tokens -= 1
    return true
  }
}

export class NodeAttestation {
  private readonly o: NodeApiOptions
  private readonly limiter: TokenBuckets
  private readonly serverId: string

  constructor(o: NodeApiOptions, serverId: string) {
    this.o = o
    this.limiter = new TokenBuckets(o.attestRatePerSecond)
    this.serverId = serverId
  }

  async attest(stream: AttestStream): Promise<void> {
    if (!this.limiter.take(stream.peer, this.o.clock.now().getTime())) {
      throw new NodeApiError(
        Status.RESOURCE_EXHAUSTED,
        'rate_limited',
        'too many attestations from this address',
        'retry in a second',
      )
    }
    const first = await stream.receive()
    const params = first.params
    if (!params?.data) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'malformed',
        'the first AttestAgent message must carry params',
        'send params first',
      )
    }
    const attestor = this.o.attestors.get(params.data.type)
    if (!attestor) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'unknown_attestor',
        `node attestor '${params.data.type}' is not configured on this server`,
        `use one of: ${[...this.o.attestors.keys()].join(', ')}`,
      )
    }
    const publicKey = await csrKey(params.csr)
    let rounds = 0
    const challenge = async (c: Uint8Array): Promise<Uint8Array> => {
      if (++rounds > MAX_CHALLENGE_ROUNDS)
        throw new NodeApiError(
          Status.INVALID_ARGUMENT,
          'challenge_rounds',
          `the attestor asked for more than ${MAX_CHALLENGE_ROUNDS} challenge rounds`,
          'the node attestor plugin misbehaves; check the server and agent versions',
        )
      await stream.send({ challenge: c })
      const reply = await stream.receive()
      if (!reply.challengeResponse) {
        throw new NodeApiError(
          Status.INVALID_ARGUMENT,
          'malformed',
          'expected a challenge response',
          'answer the challenge',
        )
      }
      return reply.challengeResponse
    }
    let result: Awaited<ReturnType<ServerNodeAttestor['attest']>>
    const journalWrites = new Map<string, string>()
    try {
      const ds = this.o.datastore
      const journal = (path: string) => `attestor:${attestor.name}:${path}`
      result = await attestor.attest(params.data.payload, challenge, {
        trustDomain: this.o.trustDomain.name,
        now: this.o.clock.now(),
        agentPublicKey: publicKey,
        // Kept until the node record is written, in the same transaction (saveAttestation).
        state: {
          get: async (path) => journalWrites.get(journal(path)) ?? ds.getJournal(journal(path)),
          set: async (path, value) => {
            journalWrites.set(journal(path), value)
          },
        },
      })
    } catch (err) {
      if (err instanceof NodeApiError) throw err
      this.o.log?.('warn', 'node attestation failed', {
        attestor: attestor.name,
        peer: stream.peer,
        error: (err as Error).message,
      })
      const msg = isSpiffeEdgeError(err) ? err.message : 'attestation failed'
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'attestation_failed',
        `failed to attest: ${msg}`,
        isSpiffeEdgeError(err) && err.remedy ? err.remedy : 'check the agent and server logs',
      )
    }
    const agentId = SpiffeId.fromPath(this.o.trustDomain, result.agentPath)
    const id = agentId.toString()
    if (id === this.serverId || !result.agentPath.startsWith('/spire/agent/')) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'bad_agent_id',
        `attestor produced an invalid agent ID ${id}`,
        'fix the node attestor plugin',
      )
    }
    const existing = await this.o.datastore.getAttestedNode(id)
    if (existing?.banned) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'banned',
        'failed to attest: agent is banned',
        'evict the agent (server agent evict) to let it attest again',
      )
    }
    const issued = await this.o.ca.signX509Svid({
      publicKey,
      spiffeId: agentId,
      ttlSeconds: this.o.agentTtlSeconds,
    })
    const selectors: Selector[] = [
      { type: 'spiffe_id', value: id },
      ...result.selectors.map((s) => ({ type: s.type, value: s.value })),
    ]
    const now = Math.floor(this.o.clock.now().getTime() / 1000)
    const node: AttestedNode = {
      spiffeId: id,
      attestorType: attestor.name,
      selectors,
      certSerial: issued.serial,
      previousCertSerial: '',
      certNotAfter: Math.floor(issued.notAfter.getTime() / 1000),
      canReattest: result.canReattest,
      banned: false,
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
    }
    await this.o.datastore.saveAttestation(node, journalWrites)
    this.o.log?.('info', 'agent attested', {
      agent: id,
      attestor: attestor.name,
      peer: stream.peer,
    })
    await stream.send({
      result: {
        svid: svidMessage(issued, id),
        reattestable: result.canReattest,
        selectors,
        bundle: this.o.ca.bundle().toSpiffeJson(),
      },
    })
  }
}
