/**
 * SPIRE's `health_checks` listener: plain HTTP liveness and readiness for orchestrators and load
 * balancers. It reads nothing from the caller but the request line (no body, GET/HEAD only,
 * short timeouts), answers from in-memory state, and says nothing secret.
 */
import { createServer, type Server } from 'node:http'
import type { ConfigReader, Table } from './config.js'
import { type HttpListener, listenHttp } from './http-listener.js'

export interface HealthChecksConfig {
  readonly bindAddress: string
  readonly bindPort: number
  readonly livePath: string
  readonly readyPath: string
}

export interface HealthState {
  /** Details are operator-facing (no secrets); `ok` decides 200 or 503. */
  live(): { ok: boolean; details?: Record<string, unknown> }
  ready(): { ok: boolean; details?: Record<string, unknown> }
}

/** `[health_checks]` as SPIRE spells it; undefined unless `listener_enabled = true`. */
export function healthChecksConfig(r: ConfigReader, doc: Table): HealthChecksConfig | undefined {
  const t = r.table(doc, 'health_checks', 'health_checks')
  r.known(
    t,
    ['listener_enabled', 'bind_address', 'bind_port', 'live_path', 'ready_path'],
    'health_checks',
  )
  if (!t || !r.bool(t, 'listener_enabled', 'health_checks', false)) return undefined
  // SPIRE's examples quote the port ("8080"): take either.
  const rawPort = t.bind_port
  const port = typeof rawPort === 'string' && /^\d+$/.test(rawPort) ? Number(rawPort) : rawPort
  const bindPort = r.int({ bind_port: port }, 'bind_port', 'health_checks', 80, 0, 65535)
  const path = (key: string, def: string) => {
    const v = r.string(t, key, 'health_checks', def)!
    if (!v.startsWith('/')) r.problems.push(`health_checks.${key}: must start with '/'`)
    return v
  }
  return {
    bindAddress: r.string(t, 'bind_address', 'health_checks', 'localhost')!,
    bindPort,
    livePath: path('live_path', '/live'),
    readyPath: path('ready_path', '/ready'),
  }
}

export type HealthListener = HttpListener

export async function startHealthListener(
  cfg: HealthChecksConfig,
  state: HealthState,
): Promise<HealthListener> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    const check =
      path === cfg.livePath ? state.live : path === cfg.readyPath ? state.ready : undefined
    if (!check) {
      res.writeHead(404).end()
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    let result: { ok: boolean; details?: Record<string, unknown> }
    try {
      result = check()
    } catch (err) {
      // A check that cannot run is a failed check (fail closed).
      result = { ok: false, details: { error: (err as Error).message } }
    }
    const body = JSON.stringify(result.details ?? {})
    res
      .writeHead(result.ok ? 200 : 503, {
        'content-type': 'application/json',
        'cache-control': 'no-store',
      })
      .end(req.method === 'HEAD' ? undefined : body)
  })
  // Nothing to read but headers: slow or idle clients are cut off quickly.
  server.headersTimeout = 5000
  server.requestTimeout = 5000
  server.keepAliveTimeout = 1000
  server.maxHeadersCount = 32
  server.maxConnections = 256
  return listenHttp(
    server,
    { host: cfg.bindAddress, port: cfg.bindPort },
    {
      code: 'ERR_HEALTH_LISTENER',
      table: 'health_checks',
      portKey: 'health_checks.bind_port',
      addressKey: 'health_checks.bind_address',
    },
  )
}
