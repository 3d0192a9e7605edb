/**
 * The node API over MQTT v5: the second NodeClient implementation. The broker is a relay that is
 * not trusted: every server message is a SignedResponse verified against the agent's current
 * bundle (node-call.ts), AttestAgent rounds are bound to the attempt's nonce and round, and the
 * secrets (join token and evidence, JWT-SVIDs, broker credentials) travel as JWE (jwe.ts).
 * Topics: src/transport/mqtt/broker-access.ts.
 */
import { randomBytes } from 'node:crypto'
import type { AgentNodeAttestor } from '../../attestors/types.js'
import type { Signer } from '../../keymanager/types.js'
import { TrustBundle } from '../../spiffe/bundle.js'
import type { TrustDomain } from '../../spiffe/id.js'
import {
  attestParams,
  attestStep,
  openVerified,
  signRequest,
  verifyResponse,
} from '../node-call.js'
import {
  type AgentAuth,
  type AttestResult,
  NodeCallError,
  type NodeClient,
} from '../node-client.js'
import { type CallMethod, type CallMethods, codec, type Init } from '../proto.js'
import { agentTopicKey, type BrokerCredentials, mqttTopics } from './broker-access.js'
import { type BrokerTls, brokerTls, MqttRpc } from './connection.js'
import { decryptWith, encryptTo, MAX_JWE, newEcdhKey } from './jwe.js'

export interface MqttNodeClientOptions {
  /** mqtt:// or mqtts:// URL of the broker. */
  readonly url: string
  readonly trustDomain: TrustDomain
  readonly bundle: TrustBundle | 'insecure'
  readonly topicPrefix: string
  /** Broker TLS CA (PEM), the bootstrap credentials, an optional client certificate. */
  readonly ca?: Buffer | undefined
  readonly username?: string | undefined
  readonly password?: string | undefined
  readonly cert?: Buffer | undefined
  readonly key?: Buffer | undefined
  /** The broker credentials the server granted at the last attestation, if any. */
  readonly granted?: BrokerCredentials | undefined
  /** Called with new broker credentials, to keep them for the next start (0600, data dir). */
  readonly onGranted?: ((c: BrokerCredentials) => void) | undefined
  readonly timeoutMs?: number
  readonly sessionExpirySeconds?: number
}

/** Calls: the largest reply is a 500-SVID batch; attestation frames are smaller. */
export const MAX_CALL_PAYLOAD = 2 << 20
const MAX_ATTEST_PAYLOAD = MAX_JWE + (64 << 10)
const MAX_ATTEST_ROUNDS = 10
/** Attempts per attestAgent for unknown_key / unknown_session refusals (see attestAgent). */
const MAX_ATTEST_ATTEMPTS = 4

export class MqttNodeClient implements NodeClient {
  private readonly o: MqttNodeClientOptions
  private readonly topics: ReturnType<typeof mqttTopics>
  private bundle: TrustBundle | undefined
  private readonly insecure: boolean
  private granted: BrokerCredentials | undefined
  /** The server's encryption key (JWK JSON), learnt from a verified hello or bundle push. */
  private serverKey: string | undefined
  private agent: { rpc: MqttRpc; id: string; cred: string } | undefined
  private readonly bundleListeners = new Set<(b: TrustBundle) => void>()
  /** One TLS context and the broker's last session ticket, for every connection we open. */
  private readonly tls: BrokerTls | undefined

  constructor(o: MqttNodeClientOptions) {
    this.o = o
    this.tls = o.url.startsWith('mqtts:') ? sharedTls(o) : undefined
    this.topics = mqttTopics(o.topicPrefix)
    this.insecure = o.bundle === 'insecure'
    if (o.bundle !== 'insecure') this.bundle = o.bundle
    this.granted = o.granted
  }

  private timeout(): number {
    return this.o.timeoutMs ?? 30_000
  }

  currentBundle(): TrustBundle | undefined {
    return this.bundle
  }

  setBundle(b: TrustBundle): void {
    // The same content keeps the same object: verified server chains are cached per bundle object.
    if (!this.bundle?.equals(b)) this.bundle = b
  }

  /** Bundles pushed by the server (retained on P/v1/bundle), after verification. */
  onBundle(listener: (b: TrustBundle) => void): () => void {
    this.bundleListeners.add(listener)
    return () => this.bundleListeners.delete(listener)
  }

  private trust(): TrustBundle | 'insecure' | undefined {
    return this.bundle ?? (this.insecure ? 'insecure' : undefined)
  }

  // ------------------------------------------------------------------------------- AttestAgent

  async attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
    // A fresh bootstrap session per attempt: its client id names the only topics it may use.
    const clientId = `bs-${randomBytes(16).toString('hex')}`
    const rpc = new MqttRpc(
      {
        url: this.o.url,
        clientId,
        username: this.o.username,
        password: this.o.password,
        ca: this.o.ca,
        cert: this.o.cert,
        key: this.o.key,
        sessionExpirySeconds: 300,
        maxPayload: MAX_ATTEST_PAYLOAD,
        tls: this.tls,
      },
      this.topics.bootstrapReq(clientId),
      this.topics.bootstrapRes(clientId),
    )
    try {
      // A bounded number of fresh attempts (new nonce, same session) for refusals that only mean
      // "not here": our cached server key went away (unknown_key: a restarted server, another
      // replica), or a later round reached a replica that does not hold this attempt's challenge
      // state (unknown_session: the replica that issued the challenge restarted or another one
      // took the frame through the shared subscription).
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.attestOnce(rpc, attestor, signer)
        } catch (err) {
          const retry =
            err instanceof NodeCallError &&
            (err.reason === 'unknown_key' || err.reason === 'unknown_session')
          if (!retry || attempt >= MAX_ATTEST_ATTEMPTS) throw err
          if (err.reason === 'unknown_key') this.serverKey = undefined
        }
      }
    } finally {
      // The session is spent; its connection closes in the background.
      void rpc.close()
      // The attestor lets go of the attempt (a refused one holds TPM objects) before we settle.
      await attestor.end?.()
    }
  }

  private async attestOnce(
    rpc: MqttRpc,
    attestor: AgentNodeAttestor,
    signer: Signer,
  ): Promise<AttestResult> {
    const nonce = new Uint8Array(randomBytes(16))
    const exchange = async (round: number, step: Uint8Array) => {
      const bytes = codec.mqttAttestRequest.encode({ nonce, round, step })
      const res = await this.resending(rpc, bytes, (b) => {
        const r = codec.signedResponse.decode(b)
        verifyResponse('AttestAgent', nonce, r, this.trust(), this.o.trustDomain)
        // The round is in the signed body: a broker cannot replay an earlier round's answer.
        const m = r.errorCode === 0 ? codec.mqttAttestResponse.decode(r.body) : undefined
        if (m && m.round !== round) throw new NodeCallError(16, 'round', 'reply for another round')
        return { r, m }
      })
      if (!res.m) throw new NodeCallError(res.r.errorCode, res.r.errorReason, res.r.errorMessage)
      return res.m
    }
    if (this.serverKey === undefined)
      this.serverKey = (await exchange(0, new Uint8Array())).serverKey
    const params = await attestParams(attestor, signer)
    const replyKey = await newEcdhKey()
    const jwe = await encryptTo(this.serverKey, params, {
      spe_nonce: Buffer.from(nonce).toString('base64url'),
      spe_rk: replyKey.publicJwk,
    })
    let m = await exchange(1, Buffer.from(jwe, 'utf8'))
    for (let round = 1; round <= MAX_ATTEST_ROUNDS; ) {
      const s = await attestStep(m.step, attestor, this.o.trustDomain)
      if (!s) throw new NodeCallError(3, 'malformed', 'empty attestation frame')
      if ('reply' in s) {
        round++
        m = await exchange(round, s.reply)
        continue
      }
      this.setBundle(s.result.bundle)
      if (m.brokerCredentials) {
        const c = await decryptWith(replyKey.privateKey, m.brokerCredentials, 4096)
        this.setGranted(parseCredentials(c))
      }
      return s.result
    }
    throw new NodeCallError(3, 'challenge_rounds', 'too many attestation rounds')
  }

  /**
   * One attestation frame, sent again (same bytes) when no reply came: a reply lost with a link
   * or a broker restart is sent again by the server from what it kept, so the attempt goes on
   * (a spent join token is not lost with it).
   */
  private async resending<T>(rpc: MqttRpc, bytes: Uint8Array, verify: (b: Uint8Array) => T) {
    const tries = 3
    for (let i = 1; ; i++) {
      try {
        return await rpc.request(bytes, Math.ceil(this.timeout() / tries), verify)
      } catch (err) {
        if (i >= tries || !(err instanceof NodeCallError) || err.reason !== 'unreachable') throw err
      }
    }
  }

  private setGranted(c: BrokerCredentials): void {
    this.granted = c
    this.o.onGranted?.(c)
    // The next call reconnects with them (the agent connection is per identity + credentials).
  }

  // ------------------------------------------------------------------------------- signed calls

  private agentRpc(spiffeId: string): MqttRpc {
    const user = this.granted?.username ?? this.o.username
    const cred = `${user ?? ''}\n${this.granted?.password ?? this.o.password ?? ''}`
    if (this.agent && this.agent.id === spiffeId && this.agent.cred === cred) return this.agent.rpc
    void this.agent?.rpc.close()
    const k = agentTopicKey(spiffeId)
    const rpc = new MqttRpc(
      {
        url: this.o.url,
        clientId: `agent-${k}`,
        username: user,
        password: this.granted?.password ?? this.o.password,
        ca: this.o.ca,
        cert: this.o.cert,
        key: this.o.key,
        sessionExpirySeconds: this.o.sessionExpirySeconds ?? 3600,
        maxPayload: MAX_CALL_PAYLOAD,
        tls: this.tls,
      },
      this.topics.agentReq(k),
      this.topics.agentRes(k),
    )
    rpc.listen(this.topics.bundle, (payload) => this.bundlePushed(payload))
    this.agent = { rpc, id: spiffeId, cred }
    return rpc
  }

  async call<M extends CallMethod>(
    method: M,
    body: Init<CallMethods[M]['request']>,
    auth?: AgentAuth,
  ): Promise<CallMethods[M]['response']> {
    if (!auth)
      throw new NodeCallError(16, 'not_attested', `${method} over MQTT needs an attested agent`)
    const rpc = this.agentRpc(auth.spiffeId)
    // A JWT-SVID is a bearer token: ask for it encrypted to a key only this call holds.
    const jwtKey = method === 'NewJWTSVID' ? await newEcdhKey() : undefined
    const sent = jwtKey ? { ...body, responseKey: jwtKey.publicJwk } : body
    const signed = await signRequest(method, sent as typeof body, auth)
    const verified = await rpc.request(signed.bytes, this.timeout(), (b) => {
      const r = codec.signedResponse.decode(b)
      verifyResponse(method, signed.nonce, r, this.bundle, this.o.trustDomain)
      return r
    })
    const res = openVerified(method, verified)
    if (jwtKey) {
      const r = res as CallMethods['NewJWTSVID']['response']
      if (!r.encryptedToken || r.token)
        throw new NodeCallError(16, 'not_encrypted', 'the server sent the JWT-SVID unencrypted')
      const token = Buffer.from(await decryptWith(jwtKey.privateKey, r.encryptedToken, 64 << 10))
      return {
        ...r,
        token: token.toString('utf8'),
        encryptedToken: '',
      } as CallMethods[M]['response']
    }
    return res
  }

  /** A retained bundle from the server: used only when signed by it and newer than ours. */
  private bundlePushed(payload: Buffer): void {
    const cur = this.bundle
    if (!cur) return
    try {
      const res = codec.signedResponse.decode(payload)
      // The signer must chain to the bundle we hold now, so a forged push cannot start a trust chain.
      verifyResponse('BundlePush', new Uint8Array(), res, cur, this.o.trustDomain, false)
      const push = codec.bundlePush.decode(res.body)
      if (push.serverKey) this.serverKey = push.serverKey
      if (push.sequence <= cur.sequence) return
      const next = TrustBundle.fromSpiffeJson(this.o.trustDomain, push.bundle)
      if (next.sequence !== push.sequence) return
      this.setBundle(next)
      for (const l of this.bundleListeners) l(next)
    } catch {
      // Not from our server, or malformed: a broker may send anything; nothing changes.
    }
  }

  close(): void {
    void this.agent?.rpc.close()
    this.agent = undefined
  }
}

/** The shared TLS state, or none when ca/cert/key do not load (each connection reports why). */
function sharedTls(o: MqttNodeClientOptions): BrokerTls | undefined {
  try {
    return brokerTls(o)
  } catch {
    return undefined
  }
}

function parseCredentials(b: Uint8Array): BrokerCredentials {
  try {
    const j = JSON.parse(Buffer.from(b).toString('utf8')) as Record<string, unknown>
    if (typeof j.username === 'string' && typeof j.password === 'string' && j.username.length < 256)
      return { username: j.username, password: j.password }
  } catch {
    // fall through
  }
  throw new NodeCallError(3, 'malformed', 'the broker credentials do not parse')
}
