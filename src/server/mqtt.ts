/**
 * Serves the node API over MQTT v5 beside gRPC: the same NodeApi (calls and AttestAgent), reached
 * through a broker that is not trusted. Each replica subscribes with a shared subscription
 * ($share/<group>/...), so any replica may take any request; replies go to the request's Response
 * Topic only when it is the matching `.../res` topic of the same agent or bootstrap session, with
 * the request's Correlation Data, QoS 1 and a Message Expiry. The signed bundle (BundlePush) is
 * published retained on P/v1/bundle at start, on every (re)connect (a broker without persistence
 * forgets retained messages) and whenever the bundle, the server SVID or the key changes.
 */
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto'
import { existsSync, linkSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt'
import { SpiffeEdgeError } from '../errors.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import { parseCert, uriSans } from '../spiffe/x509-cert.js'
import { agentTopicKey, type BrokerAccess, mqttTopics } from '../transport/mqtt/broker-access.js'
import { noDelay } from '../transport/mqtt/connection.js'
import { type EcdhKeyPair, MAX_JWE, newEcdhKey } from '../transport/mqtt/jwe.js'
import { codec, type SignedResponse } from '../transport/proto.js'
import { MAX_RECEIVE_MESSAGE } from './grpc.js'
import { AttestSessions, type AttestSessionsOptions } from './mqtt-attest.js'
import { type NodeApi, NodeApiError, type ServerIdentity, Status } from './node-api.js'

export interface NodeMqttOptions {
  readonly url: string
  readonly topicPrefix: string
  readonly sharedGroup: string
  readonly clientId: string
  readonly username?: string | undefined
  readonly password?: string | undefined
  readonly ca?: Buffer | undefined
  readonly cert?: Buffer | undefined
  readonly key?: Buffer | undefined
  readonly encryptionKey: EcdhKeyPair
  /** The replay cache every replica shares (the datastore's seen_nonces). */
  readonly replay: AttestSessionsOptions['replay']
  readonly brokerAccess?: BrokerAccess | undefined
  readonly bundle: () => TrustBundle
  readonly identity: () => ServerIdentity
  readonly log?:
    | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
    | undefined
}

export interface NodeMqttServer extends AsyncDisposable {
  close(): Promise<void>
  /** Publishes the bundle now (the server calls it on a bundle change; a timer also checks). */
  publishBundle(): Promise<void>
  /** Whether the broker connection is up now (health: not ready for MQTT while it is not). */
  connected(): boolean
}

/** How long a reply waits in the broker for an agent whose link is down (and a request for us). */
const REPLY_EXPIRY_SECONDS = 300
/**
 * Requests handled at once (each at most MAX_RECEIVE_MESSAGE, 1 MiB: 256 MiB at worst); more are
 * dropped and their agents resend. Claims commit in batches (one fsync per event-loop turn), so
 * the loop takes requests faster than one fsync each: 64 dropped requests under a back-to-back
 * fleet (bench/mqtt-fleet.ts, 200 agents), 256 none.
 */
const MAX_IN_FLIGHT = 256
/**
 * Bootstrap frames handled at once, counted apart: anyone holding the shared bootstrap password
 * (or the broker) can send them, and in one count with the agents' requests a flood of them
 * had every attested agent's request dropped. Attestation frames are few per agent.
 */
const MAX_BOOTSTRAP_IN_FLIGHT = 128
/** Dropped requests are logged at most this often (a flood must not flood the log too). */
const DROP_LOG_MS = 1000
const RECONNECT_MIN_MS = 1000
const RECONNECT_MAX_MS = 30_000
const MAX_BOOTSTRAP_MESSAGE = MAX_JWE + (64 << 10)

/** The server's long-lived encryption key for attestation params: created once, never replaced. */
export async function loadOrCreateEncryptionKey(path: string): Promise<EcdhKeyPair> {
  if (!existsSync(path)) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`
    writeFileSync(tmp, privateKey.export({ type: 'pkcs8', format: 'pem' }), {
      mode: 0o600,
      flag: 'wx',
    })
    try {
      // A hard link never replaces an existing file: two starts racing keep the first key.
      linkSync(tmp, path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    } finally {
      rmSync(tmp, { force: true })
    }
  }
  let key: KeyObject
  try {
    key = createPrivateKey(readFileSync(path))
  } catch (err) {
    throw new SpiffeEdgeError('ERR_KEY_MANAGER', `${path}: not a readable private key`, {
      cause: err,
      remedy:
        'restore the file from a backup, or move it aside to make a new one (agents fetch it again)',
    })
  }
  return newEcdhKey(key)
}

export async function startNodeMqttServer(
  api: NodeApi,
  o: NodeMqttOptions,
): Promise<NodeMqttServer> {
  const t = mqttTopics(o.topicPrefix)
  const client: MqttClient = mqtt.connect(o.url, {
    protocolVersion: 5,
    clientId: o.clientId,
    clean: false,
    properties: {
      sessionExpiryInterval: REPLY_EXPIRY_SECONDS,
      maximumPacketSize: MAX_RECEIVE_MESSAGE + 4096,
    },
    reconnectPeriod: RECONNECT_MIN_MS,
    connectTimeout: 10_000,
    resubscribe: true,
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
    ...(o.ca ? { ca: [o.ca] } : {}),
    ...(o.cert ? { cert: o.cert } : {}),
    ...(o.key ? { key: o.key } : {}),
    rejectUnauthorized: true,
  })
  noDelay(client)
  const inFlight = { agent: 0, bootstrap: 0 }
  const dropped = { agent: 0, bootstrap: 0 }
  let dropLogAt = 0
  const publishReply = (topic: string, corr: Buffer, res: SignedResponse) => {
    client.publish(topic, Buffer.from(codec.signedResponse.encode(res)), {
      qos: 1,
      properties: { correlationData: corr, messageExpiryInterval: REPLY_EXPIRY_SECONDS },
    })
  }
  const sessions = new AttestSessions({
    api,
    encryptionKey: o.encryptionKey,
    replay: o.replay,
    brokerAccess: o.brokerAccess,
    replica: o.clientId,
    log: o.log,
  })
  const bootstrapRe = new RegExp(`^${escapeRe(o.topicPrefix)}/v1/bootstrap/(bs-[0-9a-f]{32})/req$`)
  const agentRe = new RegExp(`^${escapeRe(o.topicPrefix)}/v1/agent/([0-9a-f]{32})/req$`)

  const onMessage = async (topic: string, payload: Buffer, packet: IPublishPacket) => {
    const corr = packet.properties?.correlationData
    const responseTopic = packet.properties?.responseTopic
    if (!corr || corr.length === 0 || corr.length > 64 || !responseTopic) return
    const b = bootstrapRe.exec(topic)
    if (b) {
      const clientId = b[1]!
      // A reply topic other than the session's own would let a broker point our answer elsewhere.
      if (responseTopic !== t.bootstrapRes(clientId) || payload.length > MAX_BOOTSTRAP_MESSAGE)
        return
      const c = Buffer.from(corr)
      await sessions.handle(clientId, new Uint8Array(payload), (res) =>
        publishReply(responseTopic, c, res),
      )
      return
    }
    const a = agentRe.exec(topic)
    if (!a) return
    const k = a[1]!
    if (responseTopic !== t.agentRes(k) || payload.length > MAX_RECEIVE_MESSAGE) return
    const bytes = new Uint8Array(payload)
    const claimed = claimedAgentKey(bytes)
    if (claimed !== undefined && claimed !== k) {
      // The request is signed by another agent than the topic names: a broker moved it.
      const req = codec.signedRequest.decode(bytes)
      const err = new NodeApiError(
        Status.PERMISSION_DENIED,
        'wrong_topic',
        "request published on another agent's topic",
        'publish on your own topic',
      )
      publishReply(
        responseTopic,
        corr,
        await api.sign(req.method, req.nonce, new Uint8Array(), err),
      )
      return
    }
    publishReply(responseTopic, corr, await api.call(bytes))
  }
  const bootstrapPrefix = `${o.topicPrefix}/v1/bootstrap/`
  client.on('message', (topic, payload, packet) => {
    const kind = topic.startsWith(bootstrapPrefix) ? 'bootstrap' : 'agent'
    if (inFlight[kind] >= (kind === 'bootstrap' ? MAX_BOOTSTRAP_IN_FLIGHT : MAX_IN_FLIGHT)) {
      dropped[kind]++
      const now = Date.now()
      if (now - dropLogAt >= DROP_LOG_MS) {
        dropLogAt = now
        o.log?.('warn', 'MQTT node API busy; requests dropped', { topic, ...dropped })
        dropped.agent = 0
        dropped.bootstrap = 0
      }
      return
    }
    inFlight[kind]++
    onMessage(topic, payload, packet)
      .catch((err: unknown) =>
        o.log?.('warn', 'MQTT node API message failed', { topic, error: (err as Error).message }),
      )
      .finally(() => {
        inFlight[kind]--
      })
  })
  let published: string | undefined
  const publishBundle = async () => {
    if (!client.connected) return
    const b = o.bundle()
    const id = o.identity()
    const stamp = `${b.sequence}/${Buffer.from(id.chain[0] ?? [])
      .toString('base64')
      .slice(-32)}/${o.encryptionKey.kid}`
    const body = codec.bundlePush.encode({
      bundle: b.toSpiffeJson(),
      sequence: b.sequence,
      serverKey: o.encryptionKey.publicJwk,
    })
    const res = await api.sign('BundlePush', new Uint8Array(), body, undefined)
    await client.publishAsync(t.bundle, Buffer.from(codec.signedResponse.encode(res)), {
      qos: 1,
      retain: true,
    })
    published = stamp
  }
  const maybePublish = () => {
    const b = o.bundle()
    const stamp = `${b.sequence}/${Buffer.from(o.identity().chain[0] ?? [])
      .toString('base64')
      .slice(-32)}/${o.encryptionKey.kid}`
    if (stamp !== published) void publishBundle().catch(() => undefined)
  }
  client.on('connect', () => {
    const share = `$share/${o.sharedGroup}/`
    client.subscribe(
      [`${share}${o.topicPrefix}/v1/bootstrap/+/req`, `${share}${o.topicPrefix}/v1/agent/+/req`],
      { qos: 1 },
    )
    published = undefined
    void publishBundle().catch((err: unknown) =>
      o.log?.('warn', 'bundle publish failed', { error: (err as Error).message }),
    )
  })
  client.on('error', (err) =>
    o.log?.('warn', 'MQTT broker connection error', { error: err.message }),
  )
  const timer = setInterval(maybePublish, 1000)
  timer.unref()
  // The server starts whether or not the broker is up (health says not ready meanwhile) and keeps
  // trying with a bounded backoff: 1 s doubling to 30 s, back to 1 s once connected.
  let backoff = RECONNECT_MIN_MS
  let everConnected = false
  let warned = false
  client.on('connect', () => {
    if (!everConnected || warned) o.log?.('info', 'MQTT broker connected', { url: o.url })
    everConnected = true
    warned = false
    backoff = RECONNECT_MIN_MS
    client.options.reconnectPeriod = backoff
  })
  client.on('close', () => {
    if (!warned) {
      warned = true
      o.log?.('warn', 'MQTT broker not reachable; retrying with backoff', {
        url: o.url,
        remedy: 'check [server.mqtt] url, ca_file and credentials, and that the broker runs',
      })
    }
    client.options.reconnectPeriod = backoff
    backoff = Math.min(backoff * 2, RECONNECT_MAX_MS)
  })
  const close = async () => {
    clearInterval(timer)
    // Session expiry 0 on a deliberate stop: the broker drops our session and its shared
    // subscriptions now, or it would keep handing this replica its share of requests (queued for
    // a session nobody resumes) until the expiry. A crashed replica's session still does, until
    // REPLY_EXPIRY_SECONDS; agents resend a frame with no reply, and the share rotates.
    await client.endAsync(false, { properties: { sessionExpiryInterval: 0 } })
  }
  return {
    close,
    publishBundle,
    connected: () => client.connected,
    [Symbol.asyncDispose]: close,
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/**
 * Topic keys by SHA-256 of the leaf certificate: parsing the leaf cost ~1 ms of every signed call,
 * and an agent signs with the same SVID until it renews. A pure function of the bytes (nothing in
 * it is trusted: api.call verifies the chain), so a cached value is the value. Bounded, oldest out.
 */
const claimedKeys = new Map<string, string | undefined>()
const MAX_CLAIMED_KEYS = 4096

/** The topic key of the agent a request claims to be from (its SVID's URI), unverified. */
export function claimedAgentKey(bytes: Uint8Array): string | undefined {
  try {
    const req = codec.signedRequest.decode(bytes)
    const leaf = req.agentChain[0]
    if (!leaf) return undefined
    const h = createHash('sha256').update(leaf).digest('base64')
    if (claimedKeys.has(h)) return claimedKeys.get(h)
    const ids = uriSans(parseCert(leaf, 'agent SVID').p)
    const k = ids.length === 1 ? agentTopicKey(ids[0]!) : undefined
    if (claimedKeys.size >= MAX_CLAIMED_KEYS) claimedKeys.delete(claimedKeys.keys().next().value!)
    claimedKeys.set(h, k)
    return k
  } catch {
    return undefined
  }
}
