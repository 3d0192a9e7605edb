/**
 * Parsing SPIRE's `telemetry` block, apart from the Prometheus listener (telemetry.ts): config
 * parsing must not load prom-client, which an agent without [telemetry] never needs (cold start).
 */
import type { ConfigReader, Table } from './config.js'

export interface TelemetryConfig {
  readonly host: string
  readonly port: number
}

/** `[telemetry]`; undefined unless `[telemetry.Prometheus]` is present (as in SPIRE). */
export function telemetryConfig(r: ConfigReader, doc: Table): TelemetryConfig | undefined {
  const t = r.table(doc, 'telemetry', 'telemetry')
  if (!t) return undefined
  for (const k of Object.keys(t)) {
    if (k === 'Prometheus') continue
    // SPIRE's other sinks are named so a converted config says what it lost.
    const spireSink = ['DogStatsd', 'Statsd', 'M3', 'InMem', 'metric_prefix'].includes(k)
    r.problems.push(
      `telemetry.${k}: ${spireSink ? 'not supported (only Prometheus is)' : 'unknown key'}`,
    )
  }
  const p = r.table(t, 'Prometheus', 'telemetry.Prometheus')
  if (!p) return undefined
  r.known(p, ['host', 'port'], 'telemetry.Prometheus')
  // SPIRE's examples sometimes quote the port: take either.
  const raw = p.port
  const port = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : raw
  if (port === undefined) r.problems.push('telemetry.Prometheus.port: required')
  return {
    host: r.string(p, 'host', 'telemetry.Prometheus', 'localhost')!,
    port: r.int({ port }, 'port', 'telemetry.Prometheus', 0, 0, 65535),
  }
}
