/**
 * AttestAgent: rate limiting per source, the challenge/response exchange with a node attestor
 * plugin (bounded rounds), agent ID checks, bans, and the first agent SVID plus its node record.
 * Only the plugin decides who the agent is; nothing is written unless attestation succeeds.
 *
 * Two shapes of the same exchange: a stream (gRPC: the plugin's coroutine waits in memory for the
 * answer), and steps (MQTT: `begin` and `resume`, the state between rounds kept in the datastore
 * under the attempt's key, so the answer may reach any replica on that datastore and is taken
 * once). Both end in the same checks and issuance.
 */
import { randomBytes } from 'node:crypto'
import type {
  AttestationContext,
  AttestStep,
  NodeAttestationResult,
  ServerNodeAttestor,
} from '../attestors/types.js'
import { isSpiffeEdgeError } from '../errors.js'
import { SpiffeId } from '../spiffe/id.js'
import type { AttestAgentRequest, AttestAgentResponse, Selector } from '../transport/proto.js'
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
/** How long a round waits in the datastore for the agent's answer. */
export const ROUND_TTL_MS = 60_000

/** What `resume` needs besides the plugin's own state; all of it public or server-side. */
interface SavedRound {
  readonly attestor: string
  readonly csr: string
  readonly rounds: number
  readonly state: string
  /** The transport's own public facts for the attempt (MQTT: the agent's response key). */
  readonly carry?: string
}

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

  private rateLimit(peer: string): void {
    if (!this.limiter.take(peer, this.o.clock.now().getTime())) {
      throw new NodeApiError(
        Status.RESOURCE_EXHAUSTED,
        'rate_limited',
        'too many attestations from this address',
        'retry in a second',
      )
    }
  }

  private attestorFor(type: string): ServerNodeAttestor {
    const attestor = this.o.attestors.get(type)
    if (!attestor) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'unknown_attestor',
        `node attestor '${type}' is not configured on this server`,
        `use one of: ${[...this.o.attestors.keys()].join(', ')}`,
      )
    }
    return attestor
  }

  private params(first: AttestAgentRequest) {
    const params = first.params
    if (!params?.data) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'malformed',
        'the first AttestAgent message must carry params',
        'send params first',
      )
    }
    return { data: params.data, csr: params.csr }
  }

  private context(attestor: ServerNodeAttestor, publicKey: AttestationContext['agentPublicKey']) {
    const ds = this.o.datastore
    const journal = (path: string) => `attestor:${attestor.name}:${path}`
    const writes = new Map<string, string>()
    return {
      trustDomain: this.o.trustDomain.name,
      now: this.o.clock.now(),
      agentPublicKey: publicKey,
      // Writes are kept until the node record is written, in the same transaction
      // (saveAttestation): a refused attestation writes nothing.
      state: {
        get: async (path: string) => writes.get(journal(path)) ?? ds.getJournal(journal(path)),
        set: async (path: string, value: string) => {
          writes.set(journal(path), value)
        },
      },
      writes,
    }
  }

  /**
   * Runs the plugin; its refusals become coded PERMISSION_DENIED errors. The caller is not yet
   * authenticated: it gets the refusal's public part (attestor and stable reason, the remedy) and
   * an incident id; the detail (which certificate, which PCR, what the cloud API said) is logged
   * here under that id.
   */
  private async plugin<T>(attestor: ServerNodeAttestor, peer: string, run: () => Promise<T>) {
    try {
      return await run()
    } catch (err) {
      if (err instanceof NodeApiError) throw err
      const incident = randomBytes(6).toString('hex')
      const coded = isSpiffeEdgeError(err) ? err : undefined
      this.o.log?.('warn', 'node attestation failed', {
        attestor: attestor.name,
        peer,
        incident,
        code: coded?.code ?? 'ERR_INTERNAL',
        error: (err as Error).message,
      })
      const pub = coded?.publicMessage
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'attestation_failed',
        `failed to attest: ${pub ?? `${attestor.name} attestation refused`} (server incident ${incident})`,
        pub && coded?.remedy
          ? coded.remedy
          : `the server's log says why under incident ${incident}: ask its operator`,
      )
    }
  }

  private tooManyRounds(rounds: number): void {
    if (rounds > MAX_CHALLENGE_ROUNDS)
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'challenge_rounds',
        `the attestor asked for more than ${MAX_CHALLENGE_ROUNDS} challenge rounds`,
        'the node attestor plugin misbehaves; check the server and agent versions',
      )
  }

  async attest(stream: AttestStream): Promise<void> {
    this.rateLimit(stream.peer)
    const params = this.params(await stream.receive())
    const attestor = this.attestorFor(params.data.type)
    const publicKey = await csrKey(params.csr)
    let rounds = 0
    const challenge = async (c: Uint8Array): Promise<Uint8Array> => {
      this.tooManyRounds(++rounds)
      await stream.send({ challenge: c })
      return challengeResponse(await stream.receive())
    }
    const ctx = this.context(attestor, publicKey)
    const result = await this.plugin(attestor, stream.peer, () =>
      attestor.attest(params.data.payload, challenge, ctx),
    )
    await stream.send(await this.issue(attestor, result, publicKey, stream.peer, ctx.writes))
  }

  /**
   * The first step of an attestation kept as data: the params in, the result or a challenge out.
   * A challenge's round is saved under `key` (the attempt: the transport's session and nonce) for
   * `resume` on any server sharing the datastore. An attestor without steps must not challenge.
   */
  async begin(
    peer: string,
    key: string,
    first: AttestAgentRequest,
    carry?: string,
  ): Promise<AttestAgentResponse> {
    this.rateLimit(peer)
    const params = this.params(first)
    const attestor = this.attestorFor(params.data.type)
    const publicKey = await csrKey(params.csr)
    const ctx = this.context(attestor, publicKey)
    const begin = attestor.begin?.bind(attestor)
    const step: AttestStep = await this.plugin(attestor, peer, async () =>
      begin
        ? begin(params.data.payload, ctx)
        : {
            result: await attestor.attest(params.data.payload, () => notResumable(attestor), ctx),
          },
    )
    const csr = Buffer.from(params.csr).toString('base64')
    return this.next(attestor, publicKey, step, {
      peer,
      key,
      csr,
      round: 1,
      carry,
      writes: ctx.writes,
    })
  }

  /** The agent's answer to round `round` of the attempt `key`: taken once, by any replica. */
  async resume(
    peer: string,
    key: string,
    round: number,
    answer: AttestAgentRequest,
  ): Promise<{ response: AttestAgentResponse; carry?: string | undefined }> {
    const now = this.o.clock.now().getTime()
    const bytes = await this.o.datastore.takeAttestRound(key, round, now)
    if (!bytes) {
      throw new NodeApiError(
        Status.NOT_FOUND,
        'unknown_session',
        'no attestation waits for this answer (expired, answered already, or never begun)',
        'start the attestation again',
      )
    }
    const saved = JSON.parse(Buffer.from(bytes).toString('utf8')) as SavedRound
    const attestor = this.attestorFor(saved.attestor)
    const csr = new Uint8Array(Buffer.from(saved.csr, 'base64'))
    const publicKey = await csrKey(csr)
    const answerBytes = challengeResponse(answer)
    const resume = attestor.resume?.bind(attestor)
    if (!resume) notResumable(attestor)
    const ctx = this.context(attestor, publicKey)
    const step = await this.plugin(attestor, peer, () => resume(saved.state, answerBytes, ctx))
    const carry = saved.carry
    const response = await this.next(attestor, publicKey, step, {
      writes: ctx.writes,
      peer,
      key,
      csr: saved.csr,
      round: saved.rounds + 1,
      carry,
    })
    return { response, carry }
  }

  private async next(
    attestor: ServerNodeAttestor,
    publicKey: AttestationContext['agentPublicKey'],
    step: AttestStep,
    at: {
      peer: string
      key: string
      csr: string
      round: number
      carry?: string | undefined
      writes: ReadonlyMap<string, string>
    },
  ): Promise<AttestAgentResponse> {
    if ('result' in step) return this.issue(attestor, step.result, publicKey, at.peer, at.writes)
    // A step that challenges ends this process's part: what it wrote cannot wait for the record.
    for (const [k, v] of at.writes) await this.o.datastore.setJournal(k, v)
    this.tooManyRounds(at.round)
    const saved: SavedRound = {
      attestor: attestor.name,
      csr: at.csr,
      rounds: at.round,
      state: step.state,
      ...(at.carry !== undefined ? { carry: at.carry } : {}),
    }
    const now = this.o.clock.now().getTime()
    // The answer to this challenge is the attempt's frame number round + 1 (params are frame 1).
    await this.o.datastore.putAttestRound(
      at.key,
      at.round + 1,
      new Uint8Array(Buffer.from(JSON.stringify(saved))),
      now + ROUND_TTL_MS,
      now,
    )
    return { challenge: step.challenge }
  }

  /** Agent ID checks, bans, the agent SVID and the node record: after the plugin said who. */
  private async issue(
    attestor: ServerNodeAttestor,
    result: NodeAttestationResult,
    publicKey: AttestationContext['agentPublicKey'],
    peer: string,
    writes: ReadonlyMap<string, string>,
  ): Promise<AttestAgentResponse> {
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
    if (existing?.banned) throw banned()
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
    try {
      await this.o.datastore.saveAttestation(node, writes)
    } catch (err) {
      // Banned since the check above (here or on another replica): the SVID just signed is
      // never sent.
      if (isSpiffeEdgeError(err) && err.code === 'ERR_DATASTORE_CONFLICT') throw banned()
      throw err
    }
    this.o.log?.('info', 'agent attested', {
      agent: id,
      attestor: attestor.name,
      peer,
    })
    return {
      result: {
        svid: svidMessage(issued, id),
        reattestable: result.canReattest,
        selectors,
        bundle: this.o.ca.bundle().toSpiffeJson(),
      },
    }
  }
}

function challengeResponse(reply: AttestAgentRequest): Uint8Array {
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

const banned = () =>
  new NodeApiError(
    Status.PERMISSION_DENIED,
    'banned',
    'failed to attest: agent is banned',
    'evict the agent (server agent evict) to let it attest again',
  )

function notResumable(attestor: ServerNodeAttestor): never {
  throw new NodeApiError(
    Status.FAILED_PRECONDITION,
    'not_resumable',
    `node attestor '${attestor.name}' challenges but cannot resume a round on another server`,
    'attest over gRPC with this attestor',
  )
}
