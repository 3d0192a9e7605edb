/**
 * Probes what a real broker lets an MQTT v5 client do: reason codes of SUBACK / PUBACK and of a
 * refused CONNECT, and waiting for messages or a disconnect. Reason codes are MQTT v5's.
 */
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type MqttClient } from 'mqtt'
import type { MosquittoBroker } from '../../hardware-sim/mosquitto.js'
import type { BrokerCredentials } from '../../src/transport/mqtt/broker-access.js'

export const GRANTED_QOS1 = 1
export const NOT_AUTHORIZED = 0x87

export function caOf(broker: MosquittoBroker): Buffer {
  if (broker.caFile === undefined) throw new Error('the test broker must run with TLS')
  return readFileSync(broker.caFile)
}

export async function connectAs(
  broker: MosquittoBroker,
  creds: BrokerCredentials,
  clientId: string,
): Promise<MqttClient> {
  const client = await mqtt.connectAsync(broker.url, {
    protocolVersion: 5,
    username: creds.username,
    password: creds.password,
    clientId,
    ca: [caOf(broker)],
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  })
  client.on('error', () => {})
  return client
}

/** The CONNACK reason code of a refused connection (0 when it was accepted, then closed). */
export async function connectReason(
  broker: MosquittoBroker,
  creds: BrokerCredentials,
  clientId: string,
): Promise<number> {
  try {
    const c = await connectAs(broker, creds, clientId)
    await c.endAsync()
    return 0
  } catch (err) {
    return Number((err as { code?: unknown }).code)
  }
}

/** The SUBACK reason code for one filter: the granted QoS, or 0x80+ when refused. */
export async function subReason(client: MqttClient, filter: string): Promise<number> {
  try {
    const granted = await client.subscribeAsync(filter, { qos: 1 })
    return granted[0]?.qos ?? -1
  } catch (err) {
    const packet = (err as { packet?: { granted?: number[] } }).packet
    if (packet?.granted?.[0] !== undefined) return packet.granted[0]
    throw err
  }
}

/** The PUBACK reason code of a QoS 1 publish (0 = accepted). */
export async function pubReason(
  client: MqttClient,
  topic: string,
  payload = 'probe',
  retain = false,
): Promise<number> {
  try {
    await client.publishAsync(topic, payload, { qos: 1, retain })
    return 0
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'number') return code
    throw err
  }
}

/** Resolves with the first message on topic, or rejects after ms. */
export function nextMessage(client: MqttClient, topic: string, ms = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message on ${topic} within ${ms} ms`)), ms)
    const onMessage = (t: string, payload: Buffer): void => {
      if (t !== topic) return
      clearTimeout(timer)
      client.off('message', onMessage)
      resolve(payload.toString())
    }
    client.on('message', onMessage)
  })
}

/** Waits until the client's connection is closed by the other side (true) or ms pass (false). */
export async function closedWithin(client: MqttClient, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (!client.connected) return true
    await sleep(25)
  }
  return !client.connected
}
