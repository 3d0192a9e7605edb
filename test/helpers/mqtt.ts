import { readFileSync } from 'node:fs'
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt'
import type { MosquittoBroker } from '../../hardware-sim/mosquitto.js'

export interface Recorded {
  readonly topic: string
  readonly payload: Buffer
  readonly correlation: Buffer | undefined
  readonly responseTopic: string | undefined
  readonly retain: boolean
}

/**
 * A client with full broker rights that sees every message (`#`): the hostile broker's view.
 * It records every payload and can publish anything anywhere (replay, alter, inject).
 */
export interface Spy extends AsyncDisposable {
  readonly client: MqttClient
  readonly seen: Recorded[]
  /** Every recorded byte, topics and properties included, for searching. */
  bytes(): Buffer
  next(pred: (r: Recorded) => boolean, timeoutMs?: number): Promise<Recorded>
}

export async function startSpy(broker: MosquittoBroker): Promise<Spy> {
  const client = await mqtt.connectAsync(broker.url, {
    protocolVersion: 5,
    reconnectPeriod: 0,
    clientId: `spy-${process.pid}-${Date.now()}`,
    ...(broker.caFile ? { ca: [readFileSync(broker.caFile)] } : {}),
  })
  const seen: Recorded[] = []
  const waiters: { pred: (r: Recorded) => boolean; resolve: (r: Recorded) => void }[] = []
  client.on('message', (topic, payload, packet: IPublishPacket) => {
    const r: Recorded = {
      topic,
      payload: Buffer.from(payload),
      correlation: packet.properties?.correlationData,
      responseTopic: packet.properties?.responseTopic,
      retain: packet.retain,
    }
    seen.push(r)
    for (const w of waiters.splice(0)) {
      if (w.pred(r)) w.resolve(r)
      else waiters.push(w)
    }
  })
  await client.subscribeAsync('#', { qos: 1 })
  return {
    client,
    seen,
    bytes: () =>
      Buffer.concat(
        seen.flatMap((r) => [
          Buffer.from(r.topic),
          r.payload,
          r.correlation ?? Buffer.alloc(0),
          Buffer.from(r.responseTopic ?? ''),
        ]),
      ),
    next(pred, timeoutMs = 10_000) {
      const found = seen.find(pred)
      if (found) return Promise.resolve(found)
      return new Promise<Recorded>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('spy: no such message')), timeoutMs)
        waiters.push({
          pred,
          resolve: (r) => {
            clearTimeout(t)
            resolve(r)
          },
        })
      })
    },
    async [Symbol.asyncDispose]() {
      await client.endAsync(true)
    },
  }
}

/** `[server.mqtt]` for a test broker. */
export function serverMqttToml(broker: MosquittoBroker, extra = ''): string {
  return `[server.mqtt]\nurl = "${broker.url}"\n${broker.caFile ? `ca_file = "${broker.caFile}"\n` : ''}${extra}`
}

/** `[agent.mqtt]` for a test broker. */
export function agentMqttToml(broker: MosquittoBroker, extra = ''): string {
  return `[agent.mqtt]\n${broker.caFile ? `ca_file = "${broker.caFile}"\n` : ''}${extra}`
}
