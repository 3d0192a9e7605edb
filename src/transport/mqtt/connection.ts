/**
 * Request/response over one MQTT v5 connection (the agent's side): QoS 1 publishes with a
 * Response Topic and random Correlation Data, a bounded map of pending requests, a timeout per
 * request, Message Expiry so a stale request dies in the broker, and a persistent session (clean
 * start off, a session expiry) so a reply published while a cellular link is down is still
 * delivered when it returns. The broker is not trusted: replies are matched by correlation only
 * to find their waiter; the caller verifies every byte (node-call.ts).
 */
import { randomBytes } from 'node:crypto'
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { NodeCallError } from '../node-client.js'

export interface MqttConnectOptions {
  /** mqtt:// or mqtts:// URL of the broker. */
  readonly url: string
  readonly clientId: string
  readonly username?: string | undefined
  readonly password?: string | undefined
  /** CA certificates (PEM) for the broker's TLS; the system store when undefined. */
  readonly ca?: Buffer | undefined
  /** A client certificate and key (PEM) when the broker wants mutual TLS. */
  readonly cert?: Buffer | undefined
  readonly key?: Buffer | undefined
  /** How long the broker keeps the session (subscriptions, queued QoS 1 replies) while we are away. */
  readonly sessionExpirySeconds: number
  /** The largest message we accept; the broker is told (CONNECT Maximum Packet Size). */
  readonly maxPayload: number
  /** Shared by the connections of one client to this broker (mqtts:// only); see brokerTls. */
  readonly tls?: BrokerTls | undefined
}

/**
 * TLS state the connections of one node client to one broker share. Each attestation opens a
 * bootstrap connection, then the agent connection: a TLS context per connection parsed the CA
 * again (~1 ms of agent CPU), and a full handshake each time sent and verified the broker's
 * chain again. The broker's certificate is still verified against `ca` on the first connection
 * (and on any the broker does not resume); a resumed one proves the broker holds that session's
 * secret (TLS 1.3 resumption, with a fresh key exchange). In memory only.
 */
export interface BrokerTls {
  readonly secureContext: SecureContext
  /** The last session ticket the broker sent: the next connection offers it. */
  session: Buffer | undefined
}

export function brokerTls(o: {
  readonly ca?: Buffer | undefined
  readonly cert?: Buffer | undefined
  readonly key?: Buffer | undefined
}): BrokerTls {
  return {
    secureContext: createSecureContext({
      ...(o.ca ? { ca: [o.ca] } : {}),
      ...(o.cert ? { cert: o.cert } : {}),
      ...(o.key ? { key: o.key } : {}),
    }),
    session: undefined,
  }
}

/** Keeps every new session ticket of `client`'s TLS connections (the first and reconnects). */
function keepSessions(client: MqttClient, t: BrokerTls): void {
  const seen = new WeakSet<object>()
  const hook = () => {
    const s = client.stream as TLSSocket | undefined
    if (!s || seen.has(s) || typeof s.getSession !== 'function') return
    seen.add(s)
    s.on('session', (b: Buffer) => {
      t.session = b
    })
  }
  hook()
  // A reconnect builds a new stream and writes CONNECT on it before the handshake completes.
  client.on('packetsend', (p) => {
    if (p.cmd === 'connect') hook()
  })
}

const MAX_PENDING = 256
const CORRELATION_BYTES = 16
const BROKER_REMEDY =
  'check server_address (mqtts://host:port), [agent.mqtt] ca_file and the broker credentials; the agent retries'

export function brokerUnreachable(url: string, details: string): NodeCallError {
  return new NodeCallError(
    14,
    'unreachable',
    `cannot reach the server through the broker ${url}: ${details}`,
    'ERR_SERVER_UNREACHABLE',
    BROKER_REMEDY,
  )
}

/**
 * Turns Nagle off on every (re)connected socket: a request is written as small packets (PUBACK,
 * PUBLISH) and Nagle would hold the second behind the broker's delayed ACK (~40 ms a message).
 */
export function noDelay(client: MqttClient): void {
  client.on('connect', () => {
    const s = client.stream as { setNoDelay?: (on: boolean) => unknown } | undefined
    s?.setNoDelay?.(true)
  })
}

export function clientOptions(o: MqttConnectOptions): IClientOptions {
  return {
    protocolVersion: 5,
    clientId: o.clientId,
    clean: false,
    properties: {
      sessionExpiryInterval: o.sessionExpirySeconds,
      // Some overhead for the topic and properties on top of the payload.
      maximumPacketSize: o.maxPayload + 4096,
    },
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
    resubscribe: true,
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
    ...(o.tls
      ? { secureContext: o.tls.secureContext, ...(o.tls.session ? { session: o.tls.session } : {}) }
      : {
          ...(o.ca ? { ca: [o.ca] } : {}),
          ...(o.cert ? { cert: o.cert } : {}),
          ...(o.key ? { key: o.key } : {}),
        }),
    rejectUnauthorized: true,
  }
}

interface Pending {
  /** Returns true when the reply verified (and settled the request). */
  offer(b: Uint8Array): boolean
  reject(e: Error): void
  timer: NodeJS.Timeout
}

/** One connection, one request topic, one response topic, plus extra subscriptions. */
export class MqttRpc {
  readonly client: MqttClient
  private readonly pending = new Map<string, Pending>()
  private readonly handlers = new Map<string, (payload: Buffer) => void>()
  private lastError = 'not connected yet'
  private closed = false
  private readonly o: MqttConnectOptions
  private readonly reqTopic: string
  private readonly resTopic: string

  constructor(o: MqttConnectOptions, reqTopic: string, resTopic: string) {
    this.o = o
    this.reqTopic = reqTopic
    this.resTopic = resTopic
    this.client = mqtt.connect(o.url, clientOptions(o))
    noDelay(this.client)
    if (o.tls && o.url.startsWith('mqtts:')) keepSessions(this.client, o.tls)
    this.client.on('error', (err) => {
      this.lastError = err.message
    })
    this.client.on('message', (topic, payload, packet) => {
      if (payload.length > o.maxPayload) return
      if (topic === this.resTopic) {
        const corr = packet.properties?.correlationData
        if (!corr || corr.length !== CORRELATION_BYTES) return
        const key = corr.toString('hex')
        const p = this.pending.get(key)
        // Unknown correlation: a duplicate (QoS 1), a reply after our timeout, or an injection.
        if (!p) return
        // A reply that does not verify is ignored, not fatal: a broker that injects one must not
        // be able to end the request before the server's real answer arrives.
        if (p.offer(new Uint8Array(payload))) {
          this.pending.delete(key)
          clearTimeout(p.timer)
        }
        return
      }
      this.handlers.get(topic)?.(payload)
    })
    // Requests wait for the SUBACK: mqtt.js may flush a queued publish before a queued subscribe,
    // and a reply that comes before the subscription is lost. With a persistent session the
    // broker keeps the subscription; mqtt.js subscribes again when a broker restart lost it.
    this.ready = this.client.subscribeAsync(resTopic, { qos: 1 }).then((granted) => {
      const code = granted[0]?.qos ?? 128
      // 0x80 and up: the broker refused (its ACL): no reply could ever reach us.
      if (code >= 128) throw brokerUnreachable(o.url, `the broker refused to subscribe ${resTopic}`)
    })
    this.ready.catch(() => undefined)
  }

  private readonly ready: Promise<void>

  /** Calls `fn` for each message on `topic` (the bundle push). */
  listen(topic: string, fn: (payload: Buffer) => void): void {
    this.handlers.set(topic, fn)
    this.client.subscribe(topic, { qos: 1 })
  }

  /**
   * Publishes one request and waits for a reply carrying its correlation data that `verify`
   * accepts (returns without throwing); replies it refuses are dropped, and the last refusal is
   * the error when none verified before the timeout.
   */
  request<T>(payload: Uint8Array, timeoutMs: number, verify: (b: Uint8Array) => T): Promise<T> {
    if (this.closed) return Promise.reject(brokerUnreachable(this.o.url, 'the client is closed'))
    if (this.pending.size >= MAX_PENDING) {
      return Promise.reject(
        new NodeCallError(8, 'busy', `more than ${MAX_PENDING} requests waiting for the server`),
      )
    }
    const corr = randomBytes(CORRELATION_BYTES)
    const key = corr.toString('hex')
    return new Promise<T>((resolve, reject) => {
      let refused: unknown
      const timer = setTimeout(() => {
        this.pending.delete(key)
        const why = this.client.connected
          ? `no reply within ${timeoutMs / 1000}s`
          : `not connected (${this.lastError})`
        reject(refused ?? brokerUnreachable(this.o.url, why))
      }, timeoutMs)
      const offer = (b: Uint8Array): boolean => {
        try {
          resolve(verify(b))
          return true
        } catch (err) {
          refused = err
          return false
        }
      }
      this.pending.set(key, { offer, reject, timer })
      const fail = (err: Error) => {
        if (this.pending.delete(key)) {
          clearTimeout(timer)
          reject(err instanceof NodeCallError ? err : brokerUnreachable(this.o.url, err.message))
        }
      }
      this.ready.then(() => this.publish(key, payload, corr, timeoutMs, fail), fail)
    })
  }

  private publish(
    key: string,
    payload: Uint8Array,
    corr: Buffer,
    timeoutMs: number,
    fail: (e: Error) => void,
  ): void {
    if (!this.pending.has(key)) return
    this.client.publish(
      this.reqTopic,
      Buffer.from(payload),
      {
        qos: 1,
        properties: {
          responseTopic: this.resTopic,
          correlationData: corr,
          // A request the server did not take within the timeout is worthless: the broker drops it.
          messageExpiryInterval: Math.max(1, Math.ceil(timeoutMs / 1000)),
        },
      },
      (err) => {
        // mqtt.js queues while offline; an error here means the client gave up on it.
        if (err) fail(err)
      },
    )
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(brokerUnreachable(this.o.url, 'the client closed'))
    }
    this.pending.clear()
    await this.client.endAsync(true).catch(() => undefined)
  }
}
