/**
 * The OIDC discovery provider's HTTP(S) side, as SPIRE's oidc-discovery-provider serves it:
 * `/.well-known/openid-configuration` and `/keys` (a JWKS of the trust domain's public JWT
 * signing keys). Answers come from memory (the keys last polled), never from the source per
 * request, so a flood of relying parties cannot reach the agent or server. Bounded: GET/HEAD only,
 * no request body, short URL and headers, header/request timeouts, a connection cap, and only the
 * Host names in `domains`.
 */
import { createHash } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import type { OidcConfig } from './config.js'
import type { KeySource, SigningKey } from './source.js'

const MAX_URL = 2048
const MAX_CONNECTIONS = 512

export interface OidcProvider {
  readonly port: number
  /** Polls the source once now (tests; the timer does it every poll_interval). */
  refresh(): Promise<void>
  close(): Promise<void>
}

interface Body {
  readonly text: string
  readonly etag: string
}

function body(value: unknown): Body {
  const text = `${JSON.stringify(value, null, 2)}\n`
  // A strong validator from the content: the same keys give the same ETag on every replica.
  const etag = `"${createHash('sha256').update(text).digest('base64url').slice(0, 32)}"`
  return { text, etag }
}

/**
 * Host header → lower-case name without port; undefined when absent or malformed. The whole
 * header must be a name (or bracketed IPv6) and an optional numeric port: the discovery document
 * echoes it into `issuer`, so `localhost:x/evil` must not get that far.
 */
export function hostName(host: string | undefined): string | undefined {
  if (host === undefined || host.length > 300) return undefined
  const m = /^(?:\[([0-9a-f:.]+)\]|([a-z0-9.-]+))(?::\d{1,5})?$/.exec(host.toLowerCase())
  return m ? (m[1] ?? m[2]) : undefined
}

export async function startOidcProvider(
  config: OidcConfig,
  source: KeySource,
  log: Log,
): Promise<OidcProvider> {
  let keys: SigningKey[] | undefined
  let jwks: Body | undefined
  let failing = false

  async function refresh(): Promise<void> {
    try {
      const next = await source.fetch()
      const doc = body({ keys: next.map((k) => k.jwk) })
      if (jwks?.etag !== doc.etag) {
        log('info', 'serving JWT signing keys', { kids: next.map((k) => k.kid) })
      }
      keys = next
      jwks = doc
      if (failing) log('info', 'key source reachable again')
      failing = false
    } catch (err) {
      // The last good keys keep being served: a restarting agent must not blank every relying
      // party's key set. Said once per outage, not per poll.
      if (!failing) {
        const e = err as SpiffeEdgeError
        log('warn', 'cannot refresh the JWT signing keys; serving the last good set', {
          code: e.code,
          error: e.message,
          remedy: e.remedy,
        })
      }
      failing = true
    }
  }

  const prefix = config.jwtIssuer ? new URL(config.jwtIssuer).pathname.replace(/\/+$/, '') : ''
  const discoveryPath = `${prefix}/.well-known/openid-configuration`
  const keysPath = `${prefix}/keys`

  function discovery(host: string): Body {
    // SPIRE's shape: the issuer is the configured jwt_issuer, else https://<Host>.
    const issuer = (config.jwtIssuer ?? `https://${host}`).replace(/\/+$/, '')
    const algs = [...new Set((keys ?? []).map((k) => k.alg))].sort()
    return body({
      issuer,
      jwks_uri: `${issuer}/keys`,
      authorization_endpoint: '',
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: algs.length > 0 ? algs : ['ES256', 'ES384', 'RS256'],
    })
  }

  function send(req: IncomingMessage, res: ServerResponse, status: number, b: Body | string) {
    const text = typeof b === 'string' ? `${JSON.stringify({ error: b })}\n` : b.text
    res.statusCode = status
    res.setHeader('content-type', 'application/json')
    res.setHeader('x-content-type-options', 'nosniff')
    if (typeof b !== 'string') {
      res.setHeader('etag', b.etag)
      // Bounded well under a JWT key's publish-to-sign window (1/3 of ca_ttl, see ca.ts), so a
      // cached key set always holds a key before it signs.
      res.setHeader('cache-control', `public, max-age=${config.cacheMaxAgeSeconds}`)
      if (req.headers['if-none-match'] === b.etag) {
        res.statusCode = 304
        res.end()
        return
      }
    } else res.setHeader('cache-control', 'no-store')
    res.setHeader('content-length', Buffer.byteLength(text))
    res.end(req.method === 'HEAD' ? undefined : text)
  }

  function handle(req: IncomingMessage, res: ServerResponse) {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      return send(req, res, 405, 'only GET and HEAD')
    }
    // No body is read; one announced means a confused or hostile client.
    const cl = req.headers['content-length']
    if ((cl !== undefined && cl !== '0') || req.headers['transfer-encoding'] !== undefined) {
      res.setHeader('connection', 'close')
      return send(req, res, 413, 'requests carry no body')
    }
    if ((req.url ?? '').length > MAX_URL) return send(req, res, 414, 'URL too long')
    const host = hostName(req.headers.host)
    if (host === undefined || !config.domains.includes(host)) {
      // SPIRE answers 400 with the domain named; a name is not a secret, the allowlist is.
      return send(req, res, 400, `domain ${JSON.stringify(host ?? '')} is not allowed`)
    }
    const path = (req.url ?? '/').split('?')[0]!
    if (path === discoveryPath)
      return send(req, res, 200, discovery(req.headers.host!.toLowerCase()))
    if (path === keysPath) {
      if (!jwks) return send(req, res, 503, 'no keys fetched yet')
      return send(req, res, 200, jwks)
    }
    return send(req, res, 404, 'not found')
  }

  await refresh()
  let server: Server | HttpsServer
  let tlsStamp = ''
  const stamp = () => {
    const t = config.tls!
    return `${statSync(t.certFile).mtimeMs}:${statSync(t.keyFile).mtimeMs}`
  }
  const opts = {
    maxHeaderSize: 8192,
    headersTimeout: 5000,
    requestTimeout: 10_000,
    keepAliveTimeout: 5000,
  }
  if (config.tls) {
    let cert: Buffer
    let key: Buffer
    try {
      tlsStamp = stamp()
      cert = readFileSync(config.tls.certFile)
      key = readFileSync(config.tls.keyFile)
    } catch (err) {
      throw new SpiffeEdgeError(
        'ERR_CONFIG',
        `cannot read the TLS files: ${(err as Error).message}`,
        {
          remedy: 'check oidc.cert_file and oidc.key_file',
          cause: err,
        },
      )
    }
    server = createHttpsServer({ ...opts, cert, key, minVersion: 'TLSv1.2' }, handle)
  } else {
    server = createHttpServer(opts, handle)
  }
  server.maxConnections = MAX_CONNECTIONS
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new SpiffeEdgeError(
          'ERR_OIDC_LISTEN',
          `cannot listen on ${config.bindAddress}:${config.bindPort}: ${err.message}`,
          { remedy: 'pick a free oidc.bind_port, or run with the right to bind it', cause: err },
        ),
      ),
    )
    server.listen(config.bindPort, config.bindAddress, () => resolve())
  })

  /** A renewed certificate (certbot, cert-manager) is picked up without a restart. */
  function reloadTls(): void {
    if (!config.tls || !('setSecureContext' in server)) return
    try {
      const now = stamp()
      if (now === tlsStamp) return
      const cert = readFileSync(config.tls.certFile)
      const key = readFileSync(config.tls.keyFile)
      ;(server as HttpsServer).setSecureContext({ cert, key })
      tlsStamp = now
      log('info', 'reloaded the TLS certificate')
    } catch (err) {
      log('warn', 'cannot reload the TLS certificate; keeping the current one', {
        error: (err as Error).message,
      })
    }
  }

  let polling = false
  const timer = setInterval(() => {
    if (polling) return
    polling = true
    reloadTls()
    void refresh().finally(() => {
      polling = false
    })
  }, config.pollIntervalSeconds * 1000)
  timer.unref()

  return {
    port: (server.address() as AddressInfo).port,
    refresh,
    async close() {
      clearInterval(timer)
      source.close()
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      await closed
    },
  }
}
