/**
 * SPIRE's `telemetry` block, Prometheus sink only: `[telemetry.Prometheus] host, port`. The
 * listener serves the registry as text on GET /metrics and nothing else: no body is read, the
 * headers must arrive within 5 s, and a scrape renders from memory (gauges are read from the
 * running process at collect time, never from disk or the network).
 */
import { createServer, type Server } from 'node:http'
import { collectDefaultMetrics, Registry } from 'prom-client'
import { listenHttp } from './http-listener.js'
import { packageVersion } from './package-root.js'
import type { TelemetryConfig } from './telemetry-config.js'

export { type TelemetryConfig, telemetryConfig } from './telemetry-config.js'

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
