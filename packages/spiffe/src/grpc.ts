/**
 * @grpc/grpc-js credentials from an X509Source, with the same authorizers as the TLS helpers.
 * Certificates reach grpc-js through a CertificateProvider fed by the source, so each new
 * connection uses the current SVID and bundles (rotation without a restart).
 *  - Channel: OpenSSL checks the server against the bundles; checkServerIdentity runs the SPIFFE
 *    check and the authorizer, so a refused server fails the handshake.
 *  - Server: client certificates are required and checked by OpenSSL; an interceptor checks each
 *    call's peer (SPIFFE rules, own trust domain, authorizer) before any handler runs and answers
 *    PERMISSION_DENIED otherwise. grpc-js exposes only the peer's leaf, so a client whose SVID
 *    needs intermediates to reach its trust domain's bundle is refused (fail closed).
 */

import type { PeerCertificate } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import type { Authorizer } from './authorize.js'
import type { SpiffeId } from './svid.js'
import { contextOptions } from './tls.js'
import { PeerVerifier } from './verify.js'
import type { X509SvidSource } from './x509-source.js'

type CaListener = grpc.experimental.CaCertificateUpdateListener
type IdListener = grpc.experimental.IdentityCertificateUpdateListener

/** Feeds grpc-js the source's current SVID and bundles. */
export class SourceCertificateProvider implements grpc.experimental.CertificateProvider {
  private readonly ca = new Set<CaListener>()
  private readonly id = new Set<IdListener>()
  private readonly onUpdate = () => this.push()
  private readonly source: X509SvidSource

  constructor(source: X509SvidSource) {
    this.source = source
    source.on('update', this.onUpdate)
  }

  private current(): { ca: Buffer; cert: Buffer; key: Buffer } | undefined {
    try {
      const o = contextOptions(this.source)
      return {
        ca: Buffer.from((o.ca as string[]).join('')),
        cert: Buffer.from(o.cert as string),
        key: Buffer.from(o.key as string),
      }
    } catch {
      return undefined // not ready: grpc-js waits for the first update
    }
  }

  private push(): void {
    const c = this.current()
    if (c === undefined) return
    for (const l of this.ca) l({ caCertificate: c.ca })
    for (const l of this.id) l({ certificate: c.cert, privateKey: c.key })
  }

  addCaCertificateListener(l: CaListener): void {
    this.ca.add(l)
    // grpc-js registers its watcher after adding the listener: deliver on a later tick.
    setImmediate(() => {
      const c = this.current()
      if (c && this.ca.has(l)) l({ caCertificate: c.ca })
    })
  }
  removeCaCertificateListener(l: CaListener): void {
    this.ca.delete(l)
  }
  addIdentityCertificateListener(l: IdListener): void {
    this.id.add(l)
    setImmediate(() => {
      const c = this.current()
      if (c && this.id.has(l)) l({ certificate: c.cert, privateKey: c.key })
    })
  }
  removeIdentityCertificateListener(l: IdListener): void {
    this.id.delete(l)
  }

  /** Stops following the source. */
  close(): void {
    this.source.off('update', this.onUpdate)
  }
}

export function grpcChannelCredentials(
  source: X509SvidSource,
  authorize: Authorizer,
): grpc.ChannelCredentials {
  const provider = new SourceCertificateProvider(source)
  const verifier = new PeerVerifier(source)
  return grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      try {
        verifier.verify(cert, authorize)
        return undefined
      } catch (err) {
        return err as Error
      }
    },
  })
}

const kCallPeer = Symbol('spiffe.grpcPeer')

export function grpcServerCredentials(
  source: X509SvidSource,
  authorize: Authorizer,
): grpc.ServerCredentials {
  const provider = new SourceCertificateProvider(source)
  const verifier = new PeerVerifier(source)
  const creds = grpc.experimental.createCertificateProviderServerCredentials(
    provider,
    provider,
    true,
  )
  const interceptor: grpc.ServerInterceptor = (_method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, mdNext) => {
            const cert = call.getAuthContext().sslPeerCertificate
            let id: SpiffeId
            try {
              if (cert === undefined) throw new Error('no client certificate')
              id = verifier.verify(cert, authorize)
            } catch (err) {
              call.sendStatus({
                code: grpc.status.PERMISSION_DENIED,
                details: `SPIFFE peer refused: ${(err as Error).message}`,
              })
              return
            }
            // Handlers read it with grpcPeerId(call) through the metadata they receive.
            ;(metadata as unknown as Record<symbol, SpiffeId>)[kCallPeer] = id
            mdNext(metadata)
          },
        })
      },
    })
  return grpc.experimental.createServerCredentialsWithInterceptors(creds, [interceptor])
}

/** The authorized peer ID of a call on a server using grpcServerCredentials. */
export function grpcPeerId(call: { metadata: grpc.Metadata }): SpiffeId | undefined {
  return (call.metadata as unknown as Record<symbol, SpiffeId | undefined>)[kCallPeer]
}
