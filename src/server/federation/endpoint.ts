/**
 * The bundle endpoint (SPIFFE Federation 5): HTTPS, GET only, answering with our bundle as a
 * SPIFFE bundle with spiffe_sequence and spiffe_refresh_hint. No client authentication (the spec
 * forbids requiring it). Profile https_spiffe serves the server's own X509-SVID (swapped in on
 * every renewal); https_web serves a configured certificate (web PKI or an operator CA), re-read
 * every file_sync_interval.
 */
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import type { BundleEndpointConfig } from './config.js'

export interface TlsCredentials {
  readonly certificatePem: string
  readonly privateKeyPem: string
}

export interface BundleEndpointOptions {
  readonly config: BundleEndpointConfig
  /** Our bundle as SPIFFE JSON, refresh hint already set. */
  readonly bundleJson: () => string
  /** The server SVID (https_spiffe). */
  readonly identity: () => TlsCredentials
  readonly log: Log
}

export interface RunningBundleEndpoint {
  readonly port: number
  /** Call after the server SVID changed (https_spiffe): new handshakes use it. */
  identityChanged(): void
  close(): Promise<void>
}

/** Few, short connections: anyone may connect, so nothing about them is unbounded. */
const MAX_CONNECTIONS = 256
const TIMEOUT_MS = 10_000

function credentials(o: BundleEndpointOptions): TlsCredentials {
  const p = o.config.profile
  if (p.type === 'https_spiffe') return o.identity()
  try {
    return {
      certificatePem: readFileSync(p.certFile, 'utf8'),
      privateKeyPem: readFileSync(p.keyFile, 'utf8'),
    }
  } catch (err) {
    throw new SpiffeEdgeError(
      'ERR_CONFIG',
      `bundle endpoint: cannot read cert_file/key_file: ${(err as Error).message}`,
      {
        cause: err,
        remedy: 'point server.federation.bundle_endpoint cert_file and key_file at PEM files',
      },
    )
  }
}

export async function startBundleEndpoint(
  o: BundleEndpointOptions,
): Promise<RunningBundleEndpoint> {
  const c = credentials(o)
  const server: Server = createServer(
    // Mozilla "intermediate": TLS 1.2 and 1.3 (Node's default ciphers are that set).
    { cert: c.certificatePem, key: c.privateKeyPem, minVersion: 'TLSv1.2', requestCert: false },
    (req, res) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET', 'content-type': 'text/plain' })
        res.end('method not allowed\n')
        return
      }
      const body = o.bundleJson()
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'cache-control': 'no-store',
      })
      res.end(req.method === 'HEAD' ? undefined : body)
    },
  )
  server.maxConnections = MAX_CONNECTIONS
  server.headersTimeout = TIMEOUT_MS
  server.requestTimeout = TIMEOUT_MS
  server.keepAliveTimeout = 5_000
  server.maxHeadersCount = 64
  server.setTimeout(TIMEOUT_MS)
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(
        new SpiffeEdgeError(
          'ERR_SERVER_BIND',
          `bundle endpoint cannot listen on ${o.config.address}:${o.config.port}: ${err.message}`,
          {
            cause: err,
            remedy: 'set server.federation.bundle_endpoint address/port to a free local address',
          },
        ),
      ),
    )
    server.listen(o.config.port, o.config.address, () => resolve())
  })
  const port = (server.address() as AddressInfo).port
  // https_web: the certificate is renewed outside (ACME client, cert-manager); re-read it on
  // SPIRE's file_sync_interval. A file that cannot be read or used keeps the certificate served.
  let served = c
  const p = o.config.profile
  const sync =
    p.type === 'https_web'
      ? setInterval(() => {
          try {
            const n = credentials(o)
            if (
              n.certificatePem === served.certificatePem &&
              n.privateKeyPem === served.privateKeyPem
            )
              return
            server.setSecureContext({
              cert: n.certificatePem,
              key: n.privateKeyPem,
              minVersion: 'TLSv1.2',
            })
            served = n
            o.log('info', 'bundle endpoint certificate reloaded', { cert_file: p.certFile })
          } catch (err) {
            o.log('warn', 'bundle endpoint certificate not reloaded; serving the previous one', {
              cert_file: p.certFile,
              error: (err as Error).message,
              remedy: 'cert_file and key_file must be a matching PEM certificate and key',
            })
          }
        }, p.fileSyncIntervalSeconds * 1000)
      : undefined
  sync?.unref()
  o.log('info', 'bundle endpoint listening', {
    address: `${o.config.address}:${port}`,
    profile: o.config.profile.type,
  })
  return {
    port,
    identityChanged() {
      if (o.config.profile.type !== 'https_spiffe') return
      const n = o.identity()
      server.setSecureContext({
        cert: n.certificatePem,
        key: n.privateKeyPem,
        minVersion: 'TLSv1.2',
      })
    },
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(sync)
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
