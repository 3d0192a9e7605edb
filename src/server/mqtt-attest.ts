/**
 * AttestAgent over MQTT, server side: each bootstrap session's frames feed the same
 * transport-neutral NodeAttestation the gRPC stream feeds (NodeApi.attestAgent).
 *
 * State between rounds: the attestor's exchange is a coroutine (a TPM challenge holds the
 * credential-activation secret and the nonce it expects back, and only this process must know the
 * secret, or a broker could answer for the TPM). So an exchange lives in the memory of the replica
 * that got its params, for at most SESSION_TTL_MS; a later round another replica receives gets a
 * signed `unknown_session` refusal and the agent starts over. Nothing pins the reply: the reply
 * topic is the agent's own bootstrap topic, whoever answers. Join-token attestation has no second
 * round, so it needs no replica state at all.
 *
 * Replays and duplicates: a params frame whose nonce was seen is dropped without an answer (QoS 1
 * may deliver twice; a broker may replay), so no second SVID is issued and nothing is written twice;
 * a frame for a round already answered is dropped too.
 */
import { createHash, type KeyObject } from 'node:crypto'
import { ReplayCache } from '../transport/envelope.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import { decryptBound, encryptTo } from '../transport/mqtt/jwe.js'
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  codec,
  type MqttAttestRequest,
  type SignedResponse,
} from '../transport/proto.js'
import { type NodeApi, NodeApiError, Status, toNodeApiError } from './node-api.js'

const SESSION_TTL_MS = 60_000
const MAX_SESSIONS = 1000
const ANSWER_TTL_MS = 300_000
const MAX_ANSWERS = 2000

const frameDigest = (b: Uint8Array) => createHash('sha256').update(b).digest('base64')

interface Session {
  readonly clientId: string
  /** The round whose frame we wait for next. */
  expected: number
  deliver: ((m: AttestAgentRequest) => void) | undefined
  fail: ((e: Error) => void) | undefined
  /** Answers the frame the exchange is at (its correlation data), and that frame. */
  reply: Reply
  frame: Uint8Array
  readonly timer: NodeJS.Timeout
}

/** Publishes a signed frame on the session's reply topic, for one received frame. */
export type Reply = (res: SignedResponse) => void

export interface AttestSessionsOptions {
  readonly api: NodeApi
  readonly encryptionKey: { readonly privateKey: KeyObject; readonly publicJwk: string }
  readonly brokerAccess?: BrokerAccess | undefined
  readonly log?:
    | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
    | undefined
}

export class AttestSessions {
  private readonly o: AttestSessionsOptions
  private readonly sessions = new Map<string, Session>()
  private readonly seen = new ReplayCache(100_000)

  constructor(o: AttestSessionsOptions) {
    this.o = o
  }

  get size(): number {
    return this.sessions.size
  }

  private async send(
    reply: Reply,
    nonce: Uint8Array,
    round: number,
    step: AttestAgentResponse | undefined,
    extra: { serverKey?: string; brokerCredentials?: string } = {},
    err?: NodeApiError,
    keep?: { key: string; frame: Uint8Array },
  ): Promise<void> {
    const body = err
      ? new Uint8Array()
      : codec.mqttAttestResponse.encode({
          round,
          step: step ? codec.attestResponse.encode(step) : new Uint8Array(),
          ...extra,
        })
    const res = await this.o.api.sign('AttestAgent', nonce, body, err)
    if (keep) this.keep(keep.key, round, keep.frame, res)
    reply(res)
  }

  /**
   * The last answer of each attempt, for a while: an agent whose reply was lost (a link or broker
   * restart) sends the same frame again and gets the same signed answer, not a second SVID, so a
   * spent join token does not lock it out. Bounded in count and age.
   */
  private readonly answered = new Map<
    string,
    { round: number; frame: string; res: SignedResponse; at: number }
  >()

  private keep(key: string, round: number, frame: Uint8Array, res: SignedResponse): void {
    const now = Date.now()
    for (const [k, v] of this.answered) {
      if (now - v.at < ANSWER_TTL_MS && this.answered.size < MAX_ANSWERS) break
      this.answered.delete(k)
    }
    this.answered.delete(key)
    this.answered.set(key, { round, frame: frameDigest(frame), res, at: now })
  }

  /** Re-sends the kept answer when this frame is the one it answered. */
  private resend(key: string, f: MqttAttestRequest, bytes: Uint8Array, reply: Reply): boolean {
    const a = this.answered.get(key)
    if (!a || a.round !== f.round || a.frame !== frameDigest(bytes)) return false
    if (Date.now() - a.at >= ANSWER_TTL_MS) return false
    reply(a.res)
    return true
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
    const key = `${clientId}/${Buffer.from(f.nonce).toString('hex')}`
    try {
      if (f.round === 0) {
        await this.send(reply, f.nonce, 0, undefined, { serverKey: this.o.encryptionKey.publicJwk })
        return
      }
      if (this.resend(key, f, bytes, reply)) return
      if (f.round === 1) {
        try {
          this.seen.check(f.nonce, Date.now())
        } catch {
          this.o.log?.('warn', 'MQTT attestation params replayed or duplicated; dropped', {
            client: clientId,
          })
          return
        }
        await this.start(clientId, key, f, reply, bytes)
        return
      }
      const s = this.sessions.get(key)
      if (!s) {
        throw new NodeApiError(
          Status.NOT_FOUND,
          'unknown_session',
          'no attestation in progress for this nonce here',
          'start the attestation again',
        )
      }
      // A duplicate of a round already answered, or one from the future: not for us to act on.
      if (f.round !== s.expected || !s.deliver) return
      const req = codec.attestRequest.decode(f.step)
      const d = s.deliver
      s.reply = reply
      s.frame = bytes
      s.deliver = undefined
      s.fail = undefined
      d(req)
    } catch (err) {
      const e =
        toNodeApiError(err) ??
        new NodeApiError(Status.INTERNAL, 'internal', 'internal error', 'see the server log')
      await this.send(reply, f.nonce, f.round, undefined, {}, e).catch(() => undefined)
    }
  }

  private async start(
    clientId: string,
    key: string,
    f: MqttAttestRequest,
    reply: Reply,
    frame: Uint8Array,
  ): Promise<void> {
    if (this.sessions.size >= MAX_SESSIONS) {
      throw new NodeApiError(
        Status.RESOURCE_EXHAUSTED,
        'busy',
        'too many attestations in progress',
        'retry later',
      )
    }
    let first: AttestAgentRequest
    let responseKey: string | undefined
    try {
      const d = await decryptBound(
        this.o.encryptionKey.privateKey,
        Buffer.from(f.step).toString('utf8'),
      )
      // The header is authenticated: it ties these params to this attempt's nonce.
      if (d.bound.spe_nonce !== Buffer.from(f.nonce).toString('base64url'))
        throw new Error('the params are bound to another nonce')
      responseKey = d.bound.spe_rk
      first = codec.attestRequest.decode(d.plaintext)
    } catch (err) {
      throw new NodeApiError(
        Status.INVALID_ARGUMENT,
        'unknown_key',
        `the attestation params do not decrypt with this server's key: ${(err as Error).message}`,
        'fetch the server key again (the agent does this by itself)',
      )
    }
    const nonce = f.nonce
    const s: Session = {
      clientId,
      expected: 2,
      deliver: undefined,
      fail: undefined,
      reply,
      frame,
      timer: setTimeout(() => {
        s.fail?.(
          new NodeApiError(
            Status.UNAVAILABLE,
            'timeout',
            'the agent did not answer in time',
            'attest again',
          ),
        )
        this.sessions.delete(key)
      }, SESSION_TTL_MS),
    }
    s.timer.unref()
    this.sessions.set(key, s)
    let round = 1
    let firstTaken = false
    this.o.api
      .attestAgent({
        // One bucket for everything through the broker: the source address is the broker's.
        peer: 'mqtt',
        receive: () => {
          if (!firstTaken) {
            firstTaken = true
            return Promise.resolve(first)
          }
          return new Promise<AttestAgentRequest>((resolve, reject) => {
            s.expected = round + 1
            s.deliver = (m) => {
              round++
              resolve(m)
            }
            s.fail = reject
          })
        },
        send: async (m) => {
          const extra: { brokerCredentials?: string } = {}
          if (m.result && this.o.brokerAccess && responseKey) {
            const id = m.result.svid?.spiffeId ?? ''
            try {
              const c = await this.o.brokerAccess.grantAgent(id)
              extra.brokerCredentials = await encryptTo(
                responseKey,
                Buffer.from(JSON.stringify({ username: c.username, password: c.password })),
              )
            } catch (err) {
              // The SVID is issued already: the agent keeps its bootstrap connection and works
              // wherever the broker lets it; the operator sees why.
              this.o.log?.('warn', 'could not grant broker access to an attested agent', {
                agent: id,
                error: (err as Error).message,
              })
            }
          }
          await this.send(s.reply, nonce, round, m, extra, undefined, { key, frame: s.frame })
        },
      })
      .catch(async (err: unknown) => {
        const e =
          toNodeApiError(err) ??
          new NodeApiError(Status.INTERNAL, 'internal', 'internal error', 'see the server log')
        if (!toNodeApiError(err))
          this.o.log?.('warn', 'MQTT attestation failed', { error: (err as Error).message })
        await this.send(s.reply, nonce, round, undefined, {}, e, { key, frame: s.frame }).catch(
          () => undefined,
        )
      })
      .finally(() => {
        clearTimeout(s.timer)
        this.sessions.delete(key)
      })
  }

  close(): void {
    for (const s of this.sessions.values()) {
      clearTimeout(s.timer)
      s.fail?.(
        new NodeApiError(Status.UNAVAILABLE, 'closing', 'the server is stopping', 'attest again'),
      )
    }
    this.sessions.clear()
  }
}
