/**
 * Timestamps for tracing one exchange across processes (bench/mqtt-trace.ts, BENCH_TRACE=1 in
 * bench/mqtt-tpm.ts): every MQTT packet of every mqtt.js client in a process and every datastore
 * call, on the wall clock (performance.timeOrigin + now(), comparable across processes).
 */
import { MqttClient } from 'mqtt'
import { SqliteDatastore } from '../src/server/datastore/sqlite-store.js'

const now = () => performance.timeOrigin + performance.now()

export interface Ev {
  t: number
  who: string
  what: string
}
export const events: Ev[] = []
export const mark = (who: string, what: string) => events.push({ t: now(), who, what })

/** Records every packet of every mqtt.js client in this process. */
export function traceMqtt(who: string): void {
  const emit = MqttClient.prototype.emit
  MqttClient.prototype.emit = function (
    this: MqttClient,
    name: string | symbol,
    ...args: unknown[]
  ) {
    if (name === 'packetsend' || name === 'packetreceive') {
      const p = args[0] as { cmd: string; topic?: string; payload?: Buffer; messageId?: number }
      const id = this.options.clientId?.slice(0, 12) ?? '?'
      const size = p.payload ? ` ${p.payload.length}B` : ''
      mark(
        `${who}:${id}`,
        `${name === 'packetsend' ? '->' : '<-'} ${p.cmd}${p.messageId ? `#${p.messageId}` : ''}${size}`,
      )
    }
    return (emit as (...a: unknown[]) => boolean).call(this, name, ...args)
  } as typeof emit
}

/** Records the start and end of every datastore call in this process. */
export function traceDatastore(): void {
  const proto = SqliteDatastore.prototype as unknown as Record<string, unknown>
  for (const name of Object.getOwnPropertyNames(proto)) {
    const f = proto[name]
    if (name === 'constructor' || typeof f !== 'function') continue
    proto[name] = function (this: unknown, ...args: unknown[]) {
      mark('server', `ds ${name} start`)
      const r = (f as (...a: unknown[]) => unknown).apply(this, args)
      if (r instanceof Promise) {
        return r.finally(() => mark('server', `ds ${name} end`))
      }
      mark('server', `ds ${name} end`)
      return r
    }
  }
}

/** Prints the events between two agent marks, with the gap to the previous one. */
export function print(all: Ev[], from: string, to: string): void {
  const a = all.find((e) => e.who === 'agent' && e.what === from)
  const b = all.find((e) => e.who === 'agent' && e.what === to)
  if (!a || !b) return
  console.log(`\n${from} .. ${to}: ${(b.t - a.t).toFixed(2)} ms`)
  let prev = a.t
  for (const e of all) {
    if (e.t < a.t || e.t > b.t) continue
    console.log(
      `${(e.t - a.t).toFixed(2).padStart(8)} +${(e.t - prev).toFixed(2).padStart(6)}  ${e.who.padEnd(20)} ${e.what}`,
    )
    prev = e.t
  }
}
