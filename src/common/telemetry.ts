/**
 * SPIRE's `telemetry` block, Prometheus sink only: `[telemetry.Prometheus] host, port`. The
 * listener serves the registry as text on GET /metrics and nothing else: no body is read, the
 * headers must arrive within 5 s, and a scrape renders from memory (gauges are read from the
 * running process at collect time, never from disk or the network).
 */
import { createServer, type Server } from 'node:http'
import { collectDefaultMetrics, Registry } from 'prom-client'
import type { ConfigReader, Table } from './config.js'
import { listenHttp } from './http-listener.js'
import { packageVersion } from './package-root.js'

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

/** A registry with Node's process metrics (CPU, memory, event loop lag) under `prefix`. */
export function newRegistry(prefix: 'spire_server_' | 'spire_agent_'): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix })
  return registry
}

export interface MetricsListener {
  readonly port: number
  close(): Promise<void>
}

export async function startMetricsListener(
  cfg: TelemetryConfig,
  registry: Registry,
): Promise<MetricsListener> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path !== '/metrics') {
      res.writeHead(404).end()
      return
    }
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end()
      return
    }
    registry.metrics().then(
      (text) => {
        res
          .writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' })
          .end(text)
      },
      (err: Error) => {
        // A collector that throws fails the scrape, visibly, rather than serving partial numbers.
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`collect failed: ${err.message}\n`)
      },
    )
  })
  // Scrapers send a request line and a few headers: cut slow or idle clients off quickly.
  server.headersTimeout = 5000
  server.requestTimeout = 10_000
  server.keepAliveTimeout = 5000
  server.maxHeadersCount = 32
  server.maxConnections = 64
  return listenHttp(
    server,
    { host: cfg.host, port: cfg.port },
    {
      code: 'ERR_METRICS_LISTENER',
      table: 'telemetry.Prometheus',
      portKey: 'telemetry.Prometheus.port',
      addressKey: 'telemetry.Prometheus.host',
    },
  )
}

export { packageVersion }
