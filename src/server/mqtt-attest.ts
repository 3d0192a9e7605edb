/**
 * AttestAgent over MQTT, server side: each bootstrap session's frames are steps of the
 * transport-neutral attestation (NodeApi.attestBegin / attestResume).
 *
 * No replica holds state between rounds. Replicas share one datastore; a challenge's round (the
 * attestor's state: for a TPM the AK, the nonce and a SHA-256 of the credential secret, never the
 * secret) is put there under the attempt's key (bootstrap client id + attempt nonce) and the frame
 * number that must answer it, and taken (deleted, atomically across processes) by whichever
 * replica the broker gives the answer to. So the reply topic need not pin the round to a replica:
 * it is the agent's own bootstrap topic, whoever answers. The params are encrypted to the MQTT
 * encryption key every replica holds (<data_dir>/mqtt-encryption.key, the same file on each).
 *
 * Replays and duplicates: every frame of rounds 1+ is claimed once in the shared replay cache
 * (seen_nonces) by its key and digest, and its signed answer recorded there. The same frame again
 * (QoS 1 redelivery, an agent resending after a lost reply, or a broker replay), on any replica,
 * gets that same signed answer and nothing is run again: no second SVID, nothing written twice, a
 * spent join token does not lock out an agent whose reply was lost. A different frame under a
 * claimed key (an altered or forged one) gets nothing.
 */
import { createHash, type KeyObject } from 'node:crypto'
import { isSpiffeEdgeError } from '../errors.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import { decryptBound, encryptTo } from '../transport/mqtt/jwe.js'
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  codec,
  type MqttAttestRequest,
  type SignedResponse,
} from '../transport/proto.js'
import type { Datastore } from './datastore/types.js'
import { type NodeApi, NodeApiError, Status, toNodeApiError } from './node-api.js'

/** How long an answer is kept for duplicates of its frame (an agent resends within this). */
const ANSWER_TTL_MS = 300_000

const frameDigest = (b: Uint8Array) => createHash('sha256').update(b).digest('base64')

/** Publishes a signed frame on the session's reply topic, for one received frame. */
export type Reply = (res: SignedResponse) => void

export interface AttestSessionsOptions {
  readonly api: NodeApi
  /** The replay cache every replica shares. */
  readonly replay: Pick<Datastore, 'claimNonce' | 'setNonceAnswer' | 'releaseNonce'>
  readonly encryptionKey: { readonly privateKey: KeyObject; readonly publicJwk: string }
  readonly brokerAccess?: BrokerAccess | undefined
  /** Names this replica in the log (which replica answered which round). */
  readonly replica?: string | undefined
  readonly log?:
    | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
    | undefined
}

export class AttestSessions {
  private readonly o: AttestSessionsOptions

  constructor(o: AttestSessionsOptions) {
    this.o = o
  }

  private async sign(
    nonce: Uint8Array,
    round: number,
    step: AttestAgentResponse | undefined,
    extra: { serverKey?: string; brokerCredentials?: string } = {},
    err?: NodeApiError,
  ): Promise<SignedResponse> {
    const body = err
      ? new Uint8Array()
      : codec.mqttAttestResponse.encode({
          round,
          step: step ? codec.attestResponse.encode(step) : new Uint8Array(),
          ...extra,
        })
    return this.o.api.sign('AttestAgent', nonce, body, err)
  }

  /** One frame from bootstrap client `clientId` (the topic it came on says who). */
  async handle(clientId: string, bytes: Uint8Array, reply: Reply): Promise<void> {
    let f: MqttAttestRequest
    try {
      f = codec.mqttAttestRequest.decode(bytes)
    } catch {
      return // not ours to answer: without a nonce no reply could be bound to anything
    }
    if (f.nonce.length !== 16) return
    if (f.round === 0) {
      reply(await this.sign(f.nonce, 0, undefined, { serverKey: this.o.encryptionKey.publicJwk }))
      return
    }
    const key = `${clientId}/${Buffer.from(f.nonce).toString('hex')}`
    const claim = `mqtt-attest:${key}/${f.round}`
    const digest = frameDigest(bytes)
    const now = Date.now()
    let prior: { digest: string; answer?: Uint8Array } | undefined
    try {
      // Not fsynced by itself: the step's own durable writes (the token spent, the node saved)
      // are, and they carry this commit to disk with them before the answer leaves. A claim lost
      // with the power guarded nothing durable: a challenge again, or the same refusal.
      prior = await this.o.replay.claimNonce(claim, digest, now + ANSWER_TTL_MS, now, {
        sync: false,
      })
    } catch (err) {
      const e = toNodeApiError(err) ?? (isBusy(err) ? busy() : internal())
      reply(await this.sign(f.nonce, f.round, undefined, {}, e))
      return
    }
    if (prior) {
      // Taken already, here or on another replica: the same frame gets the same answer (once it
      // exists); anything else under this key is not the agent's and gets nothing.
      if (prior.digest === digest && prior.answer) {
        this.o.log?.('info', 'MQTT attestation frame seen before; its answer sent again', {
          client: clientId,
          round: f.round,
        })
        reply(codec.signedResponse.decode(prior.answer))
      } else
        this.o.log?.('warn', 'MQTT attestation frame replayed or altered; dropped', {
          client: clientId,
          round: f.round,
        })
      return
    }
    let ranNothing = false
    const res = await this.step(clientId, key, f).catch((err: unknown) => {
      if (!toNodeApiError(err) && !isBusy(err))
        this.o.log?.('warn', 'MQTT attestation failed', { error: (err as Error).message })
      const e = toNodeApiError(err) ?? (isBusy(err) ? busy() : internal())
      ranNothing = RAN_NOTHING.has(e.reason)
      return this.sign(f.nonce, f.round, undefined, {}, e)
    })
    // The answer leaves first and is recorded while it travels: the record only serves a later
    // duplicate of this frame (a QoS 1 redelivery, or the agent resending after a third of its
    // timeout), and a duplicate that comes before it exists gets nothing, as one that came during
    // the step always did; the agent sends the same frame again.
    reply(res)
    // A refusal that ran nothing keeps no row: anyone can send such frames, and the cache is the
    // one every signed call claims its nonce in (full, it refuses them all). Its duplicate is
    // refused the same way again.
    const kept = ranNothing
      ? this.o.replay.releaseNonce(claim, digest)
      : this.o.replay.setNonceAnswer(claim, codec.signedResponse.encode(res))
    await kept.catch((err: unknown) =>
      this.o.log?.('warn', 'could not record an MQTT attestation answer', {
        error: (err as Error).message,
      }),
    )
  }

  /** Runs frame `f.round` of attempt `key` and signs its answer. */
  private async step(clientId: string, key: string, f: MqttAttestRequest): Promise<SignedResponse> {
    // One bucket for everything through the broker: the source address is the broker's.
    const peer = 'mqtt'
    if (f.round === 1) {
      const { first, responseKey } = await this.params(f)
      const m = await this.o.api.attestBegin(peer, key, first, responseKey)
      this.o.log?.('info', 'MQTT attestation params answered', {
        client: clientId,
        replica: this.o.replica,
        step: m.result ? 'result' : 'challenge',
      })
      return this.sign(f.nonce, f.round, m, await this.grant(m, responseKey))
    }
    let answer: AttestAgentRequest
    try {
      answer = codec.attestRequest.decode(f.step)
    } catch {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'malformed',
        'the attestation frame does not parse',
        'send the answer the challenge asked for',
      )
    }
    const r = await this.o.api.attestResume(peer, key, f.round, answer)
    this.o.log?.('info', 'MQTT attestation round answered', {
      client: clientId,
      replica: this.o.replica,
      round: f.round,
      step: r.response.result ? 'result' : 'challenge',
    })
    return this.sign(f.nonce, f.round, r.response, await this.grant(r.response, r.carry))
  }

  private async params(
    f: MqttAttestRequest,
  ): Promise<{ first: AttestAgentRequest; responseKey: string | undefined }> {
    try {
      const d = await decryptBound(
        this.o.encryptionKey.privateKey,
        Buffer.from(f.step).toString('utf8'),
      )
      // The header is authenticated: it ties these params to this attempt's nonce.
      if (d.bound.spe_nonce !== Buffer.from(f.nonce).toString('base64url'))
        throw new Error('the params are bound to another nonce')
      return { first: codec.attestRequest.decode(d.plaintext), responseKey: d.bound.spe_rk }
    } catch (err) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'unknown_key',
        `the attestation params do not decrypt with this server's key: ${(err as Error).message}`,
        'fetch the server key again (the agent does this by itself)',
      )
    }
  }

  /** The attested agent's own broker client, its credentials encrypted to the agent. */
  private async grant(
    m: AttestAgentResponse,
    responseKey: string | undefined,
  ): Promise<{ brokerCredentials?: string }> {
    if (!m.result || !this.o.brokerAccess || !responseKey) return {}
    const id = m.result.svid?.spiffeId ?? ''
    try {
      const c = await this.o.brokerAccess.grantAgent(id)
      return {
        brokerCredentials: await encryptTo(
          responseKey,
          Buffer.from(JSON.stringify({ username: c.username, password: c.password })),
        ),
      }
    } catch (err) {
      // The SVID is issued already: the agent keeps its bootstrap connection and works wherever
      // the broker lets it; the operator sees why.
      this.o.log?.('warn', 'could not grant broker access to an attested agent', {
        agent: id,
        error: (err as Error).message,
      })
      return {}
    }
  }
}

/**
 * Refusals given before anything ran or was written: no round waited for the frame (or it did
 * not parse), the params did not decrypt, or the rate limit came first.
 */
const RAN_NOTHING: ReadonlySet<string> = new Set([
  'unknown_session',
  'unknown_key',
  'malformed',
  'rate_limited',
])

const internal = () =>
  new NodeApiError(Status.INTERNAL, 'internal', 'internal error', 'see the server log')

const busy = () =>
  new NodeApiError(
    Status.RESOURCE_EXHAUSTED,
    'busy',
    'too many attestations at once',
    'retry later',
  )

const isBusy = (err: unknown) => isSpiffeEdgeError(err) && err.code === 'ERR_DATASTORE_BUSY'
