/**
 * mTLS for node:tls, node:https and node:http2 from an X509Source.
 *
 * Both sides: OpenSSL checks the peer chain against the source's bundles (never the system CAs),
 * then PeerVerifier checks it against the bundle of the peer's own trust domain and runs the
 * authorizer; host names play no part.
 *  - Client: `checkServerIdentity` does the SPIFFE check, so a refused server fails the handshake
 *    before any request is written. `secureContext` is a getter over a context cached per source
 *    generation: each new connection takes the current SVID, at no per-connection cost.
 *  - Server: Node has no client-certificate callback, so `attach(server)` (required) hooks the
 *    server's `secureConnection` emit: a refused client is destroyed before any listener (http,
 *    http2 or yours) sees the socket. It also installs the SVID with setSecureContext and swaps it
 *    on every update (new connections only; open ones keep theirs). Until attached the options
 *    carry no certificate, so a forgotten attach fails every handshake rather than serve unchecked.
 */
import { Agent as HttpsAgent, type AgentOptions as HttpsAgentOptions } from 'node:https'
import type { Server as NetServer, Socket } from 'node:net'
import {
  type ConnectionOptions,
  createSecureContext,
  type PeerCertificate,
  type SecureContext,
  type SecureContextOptions,
  TLSSocket,
  type TlsOptions,
  type Server as TlsServer,
} from 'node:tls'
import { certificateToPem } from '../../../src/spiffe/bundle.js'
import type { Authorizer } from './authorize.js'
import { PeerUnauthorizedError } from './errors.js'
import { SpiffeId } from './svid.js'
import { PeerVerifier, verifiedPeerId } from './verify.js'
import type { X509SvidSource } from './x509-source.js'

/** Set on server sockets the guard admitted; http2's socket proxy forwards symbol reads. */
const kPeerId = Symbol('spiffe.peerId')

/** The current SVID and trust anchors of a source as node:tls context options. */
export function contextOptions(source: X509SvidSource): SecureContextOptions {
  const svid = source.getX509Svid()
  const ca: string[] = []
  for (const b of source.x509Bundles().values()) ca.push(...b.authorities.map(certificateToPem))
  return { key: svid.privateKeyPem, cert: svid.certificatesPem, ca }
}

let instances = 0

const contexts = new WeakMap<X509SvidSource, { gen: number; ctx: SecureContext }>()

/** The client context for the source's current SVID, built once per update. */
export function currentSecureContext(source: X509SvidSource): SecureContext {
  const c = contexts.get(source)
  if (c !== undefined && c.gen === source.generation) return c.ctx
  const ctx = createSecureContext(contextOptions(source))
  contexts.set(source, { gen: source.generation, ctx })
  return ctx
}

export interface SpiffeTlsClientOptions extends ConnectionOptions {
  readonly secureContext: SecureContext
  readonly rejectUnauthorized: true
  checkServerIdentity(host: string, cert: PeerCertificate): Error | undefined
}

export function tlsClientOptions(
  source: X509SvidSource,
  authorize: Authorizer,
): SpiffeTlsClientOptions {
  const verifier = new PeerVerifier(source)
  const opts = {
    rejectUnauthorized: true as const,
    checkServerIdentity(_host: string, cert: PeerCertificate): Error | undefined {
      try {
        verifier.verify(cert, authorize)
        return undefined
      } catch (err) {
        return err instanceof Error ? err : new PeerUnauthorizedError(String(err))
      }
    },
  }
  // A getter, so every connect (tls.connect and https/http2 copy options per connection) takes
  // the context of the SVID current at that moment.
  Object.defineProperty(opts, 'secureContext', {
    enumerable: true,
    get: () => currentSecureContext(source),
  })
  // Node skips checkServerIdentity on a resumed TLS session, and an https.Agent resumes the
  // sessions it cached under the same pool name: never resume, and make the pool name (which
  // includes sessionIdContext, unused by clients that pass a secureContext) differ per options
  // object and SVID, so a socket or session verified for one authorizer never serves another.
  const instance = ++instances
  Object.defineProperty(opts, 'session', { enumerable: true, value: undefined })
  Object.defineProperty(opts, 'sessionIdContext', {
    enumerable: true,
    get: () => `spiffe-${instance}-${source.generation}`,
  })
  return opts as SpiffeTlsClientOptions
}

/**
 * An https.Agent for `tlsClientOptions`: an Agent copies its options once, which would pin the
 * SVID of that moment, so its `secureContext` is made a getter again. Pooled (keep-alive)
 * connections keep their certificate; new ones take the current SVID. TLS sessions are never
 * resumed (see tlsClientOptions), so the session cache is off by default too.
 */
export function httpsAgent(
  source: X509SvidSource,
  authorize: Authorizer,
  options: HttpsAgentOptions = {},
): HttpsAgent {
  const tlsOpts = tlsClientOptions(source, authorize)
  const agent = new HttpsAgent({
    maxCachedSessions: 0,
    ...options,
    rejectUnauthorized: true,
    checkServerIdentity: tlsOpts.checkServerIdentity,
  })
  for (const k of ['secureContext', 'sessionIdContext', 'session'] as const) {
    Object.defineProperty(agent.options, k, Object.getOwnPropertyDescriptor(tlsOpts, k)!)
  }
  return agent
}

export interface SpiffeTlsServerOptions extends TlsOptions {
  readonly requestCert: true
  readonly rejectUnauthorized: true
  /** Binds the options to the server (see the module comment); returns the server. */
  attach<S extends TlsServer>(server: S): S
}

type Emit = NetServer['emit']

export function tlsServerOptions(
  source: X509SvidSource,
  authorize: Authorizer,
): SpiffeTlsServerOptions {
  const verifier = new PeerVerifier(source)
  return {
    requestCert: true,
    rejectUnauthorized: true,
    attach<S extends TlsServer>(server: S): S {
      const apply = () => {
        let o: SecureContextOptions
        try {
          o = contextOptions(source)
        } catch {
          return // no SVID yet: handshakes keep failing until the first update
        }
        server.setSecureContext(o)
      }
      apply()
      source.on('update', apply)
      server.once('close', () => source.off('update', apply))
      const emit: Emit = server.emit.bind(server)
      const guarded = (event: string | symbol, ...args: unknown[]): boolean => {
        if (event === 'secureConnection') {
          const socket = args[0]
          if (!(socket instanceof TLSSocket) || !admit(socket, verifier, authorize)) {
            if (socket instanceof TLSSocket) {
              emit(
                'tlsClientError',
                new PeerUnauthorizedError('refused by the SPIFFE authorizer'),
                socket,
              )
            }
            return false
          }
        }
        return emit(event, ...args)
      }
      server.emit = guarded as Emit
      return server
    },
  }
}

function admit(socket: TLSSocket, verifier: PeerVerifier, authorize: Authorizer): boolean {
  try {
    // rejectUnauthorized already dropped chains OpenSSL could not verify; check again anyway.
    if (!socket.authorized) throw new PeerUnauthorizedError(`${socket.authorizationError}`)
    const id = verifier.verify(socket.getPeerCertificate(true), authorize)
    ;(socket as unknown as Record<symbol, SpiffeId>)[kPeerId] = id
    return true
  } catch {
    socket.destroy()
    return false
  }
}

/**
 * The verified SPIFFE ID of the peer of a connection made with these options (a TLSSocket, an
 * https request's socket, an http2 session socket); undefined if our options did not verify it.
 */
export function peerSpiffeId(socket: Socket | TLSSocket): SpiffeId | undefined {
  const known = (socket as unknown as Record<symbol, SpiffeId | undefined>)[kPeerId]
  if (known instanceof SpiffeId) return known
  const tlsSocket = socket as TLSSocket
  if (typeof tlsSocket.getPeerCertificate !== 'function' || tlsSocket.authorized !== true) {
    return undefined
  }
  // Client side: the chain our checkServerIdentity verified on this handshake.
  return verifiedPeerId(tlsSocket.getPeerCertificate())
}
