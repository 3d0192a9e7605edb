/**
 * The agent-facing node API, transport-neutral: AttestAgent as a challenge/response exchange, and
 * every other call as a signed envelope (src/transport/envelope.ts) that the gRPC adapter (and
 * later MQTT) only carries. Trust decisions made here:
 *  - who an agent is: only a node attestor plugin says (AttestAgent); banned agents are refused;
 *  - that a request comes from that agent: a signature by the key of its current agent SVID, whose
 *    chain must verify against our own bundle and whose serial must be the one we last issued;
 *  - which SVIDs it may get: only for entries authorized to it (parented to it, or under a node
 *    alias whose selectors it has).
 * Failures are coded (status + reason) and nothing is written on a failed call.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import type { ServerNodeAttestor } from '../attestors/types.js'
import { isSpiffeEdgeError, SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import { publicKeyFromCsr } from '../spiffe/csr.js'
import { SpiffeId, type TrustDomain } from '../spiffe/id.js'
import { mintJwtSvid } from '../spiffe/jwt-svid.js'
import { validateX509Svid } from '../spiffe/x509-svid.js'
import {
  AuthError,
  checkTimestamp,
  ReplayCache,
  requestSigningString,
  responseSigningString,
  verifySignature,
} from '../transport/envelope.js'
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  type CallMethod,
  type CallMethods,
  codec,
  type EntryMessage,
  isCallMethod,
  ProtocolError,
  type Selector,
  type SignedRequest,
  type SignedResponse,
  type X509SvidMessage,
} from '../transport/proto.js'
import type { CaManager, Clock, IssuedX509 } from './ca.js'
import type { AttestedNode, Datastore, RegistrationEntry } from './datastore/types.js'

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

const MAX_BATCH = 500
const MAX_CHALLENGE_ROUNDS = 8
const UNAUTHENTICATED_METHODS: ReadonlySet<CallMethod> = new Set(['GetBundle'])

function svidMessage(issued: IssuedX509, spiffeId: string, hint = ''): X509SvidMessage {
  return {
    certChain: issued.chain,
    spiffeId,
    expiresAt: Math.floor(issued.notAfter.getTime() / 1000),
    hint,
  }
}

function entryMessage(e: RegistrationEntry): EntryMessage {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: e.selectors.map((s) => ({ type: s.type, value: s.value })),
    x509SvidTtl: e.x509SvidTtl,
    federatesWith: [...e.federatesWith],
    admin: e.admin,
    downstream: e.downstream,
    expiresAt: e.expiresAt ?? 0,
    dnsNames: [...e.dnsNames],
    revisionNumber: e.revision,
    jwtSvidTtl: e.jwtSvidTtl,
    hint: e.hint,
    createdAt: e.createdAt,
  }
}

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

export class NodeApi {
  private readonly o: NodeApiOptions
  private readonly replay = new ReplayCache()
  private readonly attestLimiter: TokenBuckets
  private readonly serverId: string
  private readonly aliasParent: string

  constructor(o: NodeApiOptions) {
    this.o = o
    this.attestLimiter = new TokenBuckets(o.attestRatePerSecond)
    this.serverId = `spiffe://${o.trustDomain.name}/spire/server`
    this.aliasParent = this.serverId
  }

  private nowMs(): number {
    return this.o.clock.now().getTime()
  }

  // ---------------------------------------------------------------- AttestAgent

  async attestAgent(stream: AttestStream): Promise<void> {
    if (!this.attestLimiter.take(stream.peer, this.nowMs())) {
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
    const publicKey = await this.csrKey(params.csr)
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
    try {
      const ds = this.o.datastore
      const journal = (path: string) => `attestor:${attestor.name}:${path}`
      result = await attestor.attest(params.data.payload, challenge, {
        trustDomain: this.o.trustDomain.name,
        now: this.o.clock.now(),
        agentPublicKey: publicKey,
        state: {
          get: (path) => ds.getJournal(journal(path)),
          set: (path, value) => ds.setJournal(journal(path), value),
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
    const now = Math.floor(this.nowMs() / 1000)
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
    if (existing) await this.o.datastore.updateAttestedNode(id, node)
    else await this.o.datastore.createAttestedNode(node)
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

  private async csrKey(csr: Uint8Array | undefined): Promise<KeyObject> {
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

  // ---------------------------------------------------------------- signed calls

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
        : await this.authenticate(req)
      const body = await this.dispatch(req.method, req.body, agent)
      return await this.respond(req, body, undefined)
    } catch (err) {
      const e =
        err instanceof NodeApiError
          ? err
          : err instanceof AuthError
            ? new NodeApiError(Status.UNAUTHENTICATED, err.reason, err.message, err.remedy ?? '')
            : err instanceof ProtocolError
              ? new NodeApiError(
                  Status.INVALID_ARGUMENT,
                  'malformed',
                  err.message,
                  err.remedy ?? '',
                )
              : isSpiffeEdgeError(err) &&
                  (err.code === 'ERR_SPIFFE_ID_INVALID' || err.code === 'ERR_DATASTORE_INVALID')
                ? new NodeApiError(
                    Status.INVALID_ARGUMENT,
                    'invalid',
                    err.message,
                    err.remedy ?? '',
                  )
                : undefined
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

  private async respond(
    req: SignedRequest,
    body: Uint8Array,
    err: NodeApiError | undefined,
  ): Promise<SignedResponse> {
    const id = this.o.identity()
    const timestampMs = this.nowMs()
    const error = { code: err?.status ?? 0, message: err?.message ?? '', reason: err?.reason ?? '' }
    const signature = await id.signer.sign(
      responseSigningString(req.method, timestampMs, req.nonce, body, error),
    )
    return {
      body,
      serverChain: [...id.chain],
      timestampMs,
      requestNonce: req.nonce,
      signature,
      errorCode: error.code,
      errorMessage: error.message,
      errorReason: error.reason,
    }
  }

  /** Checks who signed the request; returns the agent's node record. */
  private async authenticate(req: SignedRequest): Promise<AttestedNode> {
    const now = this.nowMs()
    checkTimestamp(req.timestampMs, now)
    if (req.agentChain.length === 0) {
      throw new AuthError(
        'no_svid',
        'request carries no agent SVID',
        'attest first, then sign requests with the agent SVID key',
      )
    }
    let validated: ReturnType<typeof validateX509Svid>
    try {
      const bundle = this.o.ca.bundle().x509Bundle()
      validated = validateX509Svid(
        req.agentChain,
        (td) => (td.equals(this.o.trustDomain) ? bundle : undefined),
        new Date(now),
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
    const serial = validated.leaf.serialNumber.toLowerCase().replace(/^0+/, '')
    const current = node.certSerial.toLowerCase().replace(/^0+/, '')
    const previous = node.previousCertSerial
      ? node.previousCertSerial.toLowerCase().replace(/^0+/, '')
      : undefined
    if (serial !== current && serial !== previous) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'stale_svid',
        'this agent SVID was superseded',
        'use the newest agent SVID, or re-attest',
      )
    }
    const leafKey = createPublicKey({
      key: Buffer.from(validated.leaf.publicKey.rawData),
      format: 'der',
      type: 'spki',
    })
    const data = requestSigningString(req.method, agentId, req.timestampMs, req.nonce, req.body)
    if (!verifySignature(leafKey, data, req.signature)) {
      throw new AuthError(
        'signature',
        'request signature does not verify with the agent SVID key',
        'sign with the key of the SVID you send',
      )
    }
    // Only after the signature checks out: otherwise anyone could burn an agent's nonces.
    this.replay.check(req.nonce, now)
    // The new SVID is in use: the replaced one stops working (persisted, like the renewal).
    if (serial === current && previous !== undefined)
      return this.o.datastore.updateAttestedNode(agentId, { previousCertSerial: '' })
    return node
  }

  private async dispatch(
    method: CallMethod,
    body: Uint8Array,
    agent: AttestedNode | undefined,
  ): Promise<Uint8Array> {
    switch (method) {
      case 'GetBundle': {
        const b = this.o.ca.bundle()
        return codec
          .response('GetBundle')
          .encode({ bundle: b.toSpiffeJson(), sequence: b.sequence })
      }
      case 'RenewAgent':
        return codec
          .response('RenewAgent')
          .encode(await this.renewAgent(agent!, codec.request('RenewAgent').decode(body)))
      case 'SyncEntries':
        return codec
          .response('SyncEntries')
          .encode(await this.syncEntries(agent!, codec.request('SyncEntries').decode(body)))
      case 'BatchNewX509SVID':
        return codec
          .response('BatchNewX509SVID')
          .encode(
            await this.batchNewX509Svid(agent!, codec.request('BatchNewX509SVID').decode(body)),
          )
      case 'NewJWTSVID':
        return codec
          .response('NewJWTSVID')
          .encode(await this.newJwtSvid(agent!, codec.request('NewJWTSVID').decode(body)))
    }
  }

  private async renewAgent(
    agent: AttestedNode,
    req: CallMethods['RenewAgent']['request'],
  ): Promise<CallMethods['RenewAgent']['response']> {
    if (agent.canReattest) {
      throw new NodeApiError(
        Status.PERMISSION_DENIED,
        'must_reattest',
        'this agent renews by attesting again',
        'call AttestAgent with fresh evidence',
      )
    }
    const publicKey = await this.csrKey(req.csr)
    const issued = await this.o.ca.signX509Svid({
      publicKey,
      spiffeId: SpiffeId.parse(agent.spiffeId),
      ttlSeconds: this.o.agentTtlSeconds,
    })
    // The old SVID keeps working until the new one is first used (the agent may crash, or this
    // server restart, in between), so the replaced serial is stored with the node in one write.
    await this.o.datastore.updateAttestedNode(agent.spiffeId, {
      certSerial: issued.serial,
      previousCertSerial: agent.certSerial,
      certNotAfter: Math.floor(issued.notAfter.getTime() / 1000),
    })
    return { svid: svidMessage(issued, agent.spiffeId) }
  }

  /** Entries this agent may issue: its own children, and descendants of node aliases it matches. */
  async authorizedEntries(agent: AttestedNode): Promise<RegistrationEntry[]> {
    const all = await this.o.datastore.listEntries()
    const byParent = new Map<string, RegistrationEntry[]>()
    for (const e of all) {
      const list = byParent.get(e.parentId) ?? []
      list.push(e)
      byParent.set(e.parentId, list)
    }
    const nodeSelectors = new Set(agent.selectors.map((s) => `${s.type}:${s.value}`))
    const roots = [agent.spiffeId]
    for (const alias of byParent.get(this.aliasParent) ?? []) {
      if (alias.selectors.every((s) => nodeSelectors.has(`${s.type}:${s.value}`)))
        roots.push(alias.spiffeId)
    }
    const out = new Map<string, RegistrationEntry>()
    const seen = new Set<string>()
    const queue = [...roots]
    while (queue.length > 0) {
      const parent = queue.shift()!
      if (seen.has(parent)) continue
      seen.add(parent)
      for (const e of byParent.get(parent) ?? []) {
        out.set(e.id, e)
        queue.push(e.spiffeId)
      }
    }
    return [...out.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }

  private async syncEntries(
    agent: AttestedNode,
    req: CallMethods['SyncEntries']['request'],
  ): Promise<CallMethods['SyncEntries']['response']> {
    // The revision first, then the set: an entry written in between is sent again next time at
    // worst (its revision is above the one returned), never missed.
    const revision = await this.o.datastore.currentRevision()
    if (req.sinceRevision > 0 && req.sinceRevision === revision) {
      return { revision, full: false, entries: [], deletedIds: [] }
    }
    const authorized = await this.authorizedEntries(agent)
    if (req.sinceRevision <= 0 || req.sinceRevision > revision) {
      return { revision, full: true, entries: authorized.map(entryMessage), deletedIds: [] }
    }
    // Compare against what the agent says it holds: this catches entries whose authorization
    // changed without the entry itself changing (node aliases added, removed or re-selected).
    const known = new Map((req.known ?? []).map((k) => [k.id, k.revisionNumber]))
    const ids = new Set(authorized.map((e) => e.id))
    return {
      revision,
      full: false,
      entries: authorized.filter((e) => known.get(e.id) !== e.revision).map(entryMessage),
      // Only ids the agent itself sent: it learns nothing about other agents' entries.
      deletedIds: [...known.keys()].filter((id) => !ids.has(id)),
    }
  }

  private async batchNewX509Svid(
    agent: AttestedNode,
    req: CallMethods['BatchNewX509SVID']['request'],
  ): Promise<CallMethods['BatchNewX509SVID']['response']> {
    if (req.params.length > MAX_BATCH) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'too_many',
        `at most ${MAX_BATCH} CSRs per batch`,
        'split the batch',
      )
    }
    const authorized = new Map((await this.authorizedEntries(agent)).map((e) => [e.id, e]))
    const results: CallMethods['BatchNewX509SVID']['response']['results'] = []
    for (const p of req.params) {
      const entry = authorized.get(p.entryId)
      if (!entry) {
        results.push({
          status: Status.NOT_FOUND,
          message: `entry ${p.entryId} is not authorized for this agent`,
        })
        continue
      }
      try {
        const publicKey = await this.csrKey(p.csr)
        const issued = await this.o.ca.signX509Svid({
          publicKey,
          spiffeId: SpiffeId.parse(entry.spiffeId),
          ttlSeconds: entry.x509SvidTtl || this.o.defaultX509SvidTtlSeconds,
          dnsNames: entry.dnsNames,
        })
        results.push({
          status: Status.OK,
          message: '',
          svid: svidMessage(issued, entry.spiffeId, entry.hint),
        })
      } catch (err) {
        results.push({
          status: err instanceof NodeApiError ? err.status : Status.INTERNAL,
          message: (err as Error).message,
        })
      }
    }
    return { results }
  }

  private async newJwtSvid(
    agent: AttestedNode,
    req: CallMethods['NewJWTSVID']['request'],
  ): Promise<CallMethods['NewJWTSVID']['response']> {
    const entry = (await this.authorizedEntries(agent)).find((e) => e.id === req.entryId)
    if (!entry) {
      throw new NodeApiError(
        Status.NOT_FOUND,
        'not_authorized',
        `entry ${req.entryId} is not authorized for this agent`,
        'sync entries and ask for one of them',
      )
    }
    if (req.audience.length === 0 || req.audience.some((a) => a === '')) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'no_audience',
        'at least one non-empty audience is required',
        'pass the audience',
      )
    }
    const { kid, signer } = await this.o.ca.activeJwt()
    const now = this.nowMs()
    const issuedAt = new Date(Math.floor(now / 1000) * 1000)
    const expiresAt = new Date(
      issuedAt.getTime() + (entry.jwtSvidTtl || this.o.defaultJwtSvidTtlSeconds) * 1000,
    )
    const token = await mintJwtSvid({
      spiffeId: SpiffeId.parse(entry.spiffeId),
      audience: req.audience,
      signer,
      kid,
      issuedAt,
      expiresAt,
    })
    return {
      token,
      spiffeId: entry.spiffeId,
      expiresAt: Math.floor(expiresAt.getTime() / 1000),
      issuedAt: Math.floor(issuedAt.getTime() / 1000),
      hint: entry.hint,
    }
  }
}
