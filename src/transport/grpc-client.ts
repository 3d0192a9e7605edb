/**
 * The node API over gRPC: one NodeClient implementation. TLS authenticates the server (its SVID
 * must be spiffe://<td>/spire/server and chain to the bundle); signing requests, verifying
 * responses and naming failures is node-call.ts, shared with the MQTT transport.
 */
import { createSecureContext, type PeerCertificate } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Signer } from '../keymanager/types.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { TrustDomain } from '../spiffe/id.js'
import { nodeServiceDefinition } from './grpc-service.js'
import {
  attestParams,
  attestStep,
  openResponse,
  serverSpiffeId,
  signRequest,
  transportError,
} from './node-call.js'
import { type AgentAuth, type AttestResult, NodeCallError, type NodeClient } from './node-client.js'
import type { CallMethod, CallMethods, Init } from './proto.js'

export type { AgentAuth, AttestResult, NodeClient } from './node-client.js'
export { NodeCallError } from './node-client.js'

export interface NodeClientOptions {
  /** host:port of the server. */
  readonly address: string
  readonly trustDomain: TrustDomain
  /**
   * What the agent trusts: the bundle, or 'insecure' for insecure_bootstrap (the server chain is
   * not verified, but its SVID must still be exactly spiffe://<td>/spire/server, as SPIRE checks).
   */
  readonly bundle: TrustBundle | 'insecure'
  readonly timeoutMs?: number
}

function uriSans(cert: PeerCertificate): string[] {
  return (cert.subjectaltname ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4))
}

const RawNodeClient = grpc.makeGenericClientConstructor(nodeServiceDefinition, 'Node')
type RawClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>

/** A verifying channel and the roots (the bundle's X.509 authorities as PEM) it trusts. */
interface StrictClient {
  readonly client: RawClient
  readonly pem: string
}

export class GrpcNodeClient implements NodeClient {
  private readonly o: NodeClientOptions
  private bundle: TrustBundle | undefined
  /** Verifies the server against the current bundle; created once a bundle is known. */
  private strict: StrictClient | undefined
  /** Channels whose roots a new bundle replaced, each closed once its calls' deadlines passed. */
  private readonly retired = new Map<RawClient, NodeJS.Timeout>()
  /** insecure_bootstrap only, and only until the first bundle arrives. */
  private insecure: RawClient | undefined
  private readonly serverId: string

  constructor(o: NodeClientOptions) {
    this.o = o
    this.serverId = serverSpiffeId(o.trustDomain)
    if (o.bundle === 'insecure') {
      this.insecure = new RawNodeClient(
        o.address,
        // Verifies no chain (only the server's SPIFFE ID, below), so it needs no roots: grpc-js's
        // createSsl(null) parses the whole file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names, when set,
        // for every client (40-80 ms per agent start on the development machine; issue 16).
        grpc.credentials.createFromSecureContext(createSecureContext({}), {
          rejectUnauthorized: false,
          checkServerIdentity: (h, c) => this.checkServerId(h, c),
        }),
        this.channelOptions(),
      ) as unknown as RawClient
    } else {
      this.setBundle(o.bundle)
    }
  }

  private channelOptions(): grpc.ChannelOptions {
    return {
      // The server SVID names localhost in its DNS SAN; the real check is the URI SAN below.
      'grpc.ssl_target_name_override': 'localhost',
      // grpc-js backs reconnects off to 2 minutes; our own sync loop decides how often to try, and
      // a renewal that is due must not wait out a long reconnect backoff once the server is back.
      'grpc.initial_reconnect_backoff_ms': 250,
      'grpc.max_reconnect_backoff_ms': 1000,
    }
  }

  /** Identity is the SPIFFE ID, not the host name. */
  private checkServerId(_host: string, cert: PeerCertificate): Error | undefined {
    const uris = uriSans(cert)
    if (uris.length !== 1 || uris[0] !== this.serverId) {
      return new Error(
        `server presented ${uris.join(',') || 'no URI SAN'}, expected ${this.serverId}`,
      )
    }
    return undefined
  }

  private client(): RawClient {
    if (!this.strict && this.bundle) this.strict = this.strictClient(this.bundle.toPem())
    return this.strict?.client ?? this.insecure!
  }

  private strictClient(pem: string): StrictClient {
    // One TLS context per set of roots, made here. grpc-js's certificate-provider credentials
    // made two per connection (SSL_CTX_new plus each CA certificate parsed and added: 1.2 ms each
    // with one CA on the development machine, ~3% of an agent start by TPM attestation).
    const creds = grpc.credentials.createFromSecureContext(createSecureContext({ ca: pem }), {
      rejectUnauthorized: true,
      checkServerIdentity: (h, c) => this.checkServerId(h, c),
    })
    return {
      pem,
      client: new RawNodeClient(
        this.o.address,
        creds,
        this.channelOptions(),
      ) as unknown as RawClient,
    }
  }

  /** The bundle the client now trusts (updated from attestation and GetBundle). */
  currentBundle(): TrustBundle | undefined {
    return this.bundle
  }

  /**
   * Trusts `b` from now on, for both TLS and the response envelopes. The first bundle ends
   * insecure bootstrap; later ones with other X.509 authorities replace the TLS roots for every
   * new connection: the next call makes a channel that trusts them, so a CA rotation never locks
   * the agent out (pinning the bootstrap roots did, once the server SVID came from the next CA).
   * That costs a new connection when the authorities change (a CA prepared, or one dropped).
   */
  setBundle(b: TrustBundle): void {
    this.bundle = b
    // The verifying channel is made at its first call (client()), not here: an attestation's
    // result carries the bundle, and making a channel then sat on the attestation's path.
    const s = this.strict
    if (s === undefined || s.pem === b.toPem()) return
    this.strict = undefined
    // Calls already on the old channel (verified when it connected) finish; every call has a
    // deadline, so after one timeout none is left and the channel closes.
    const t = setTimeout(() => {
      this.retired.delete(s.client)
      s.client.close()
    }, this.timeoutMs())
    t.unref()
    this.retired.set(s.client, t)
  }

  private timeoutMs(): number {
    return this.o.timeoutMs ?? 30_000
  }

  private deadline(): Date {
    return new Date(Date.now() + this.timeoutMs())
  }

  /** Runs AttestAgent: sends evidence and a CSR for `signer`, answers challenges, returns the SVID. */
  attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
    // Settles only once the attestor has let go of the attempt (a refused one holds TPM objects).
    return this.attestOnce(attestor, signer).finally(() => attestor.end?.())
  }

  private attestOnce(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
    // The evidence first (TPM commands), then the call's set-up (~0.5 ms of JS) while they run.
    const params = attestParams(attestor, signer)
    params.catch(() => undefined) // reported through fail() below, or moot if the call never starts
    return new Promise<AttestResult>((resolve, reject) => {
      const call = (
        this.client().attestAgent as (
          o: grpc.CallOptions,
        ) => grpc.ClientDuplexStream<Uint8Array, Uint8Array>
      )({
        deadline: this.deadline(),
      })
      let settled = false
      const fail = (err: unknown) => {
        if (settled) return
        settled = true
        call.cancel()
        reject(err)
      }
      call.on('data', (b: Uint8Array) => {
        void (async () => {
          const step = await attestStep(b, attestor, this.o.trustDomain)
          if (!step) return
          if ('reply' in step) {
            call.write(step.reply)
            return
          }
          this.setBundle(step.result.bundle)
          settled = true
          call.end()
          resolve(step.result)
        })().catch(fail)
      })
      call.on('error', (err: grpc.ServiceError) => fail(this.fromGrpcError(err)))
      // The stream ends after every attestation, a successful one too: build the error (and its
      // stack) only when it is news.
      call.on('end', () => {
        if (!settled)
          fail(new NodeCallError(14, 'closed', 'the server closed the attestation stream'))
      })
      params.then((m) => call.write(m)).catch(fail)
    })
  }

  /** One signed call. `auth` is required for every method but GetBundle. */
  async call<M extends CallMethod>(
    method: M,
    body: Init<CallMethods[M]['request']>,
    auth?: AgentAuth,
  ): Promise<CallMethods[M]['response']> {
    const signed = await signRequest(method, body, auth)
    const responseBytes = await new Promise<Uint8Array>((resolve, reject) => {
      ;(
        this.client().call as (
          r: Uint8Array,
          o: grpc.CallOptions,
          cb: (e: grpc.ServiceError | null, v?: Uint8Array) => void,
        ) => void
      )(signed.bytes, { deadline: this.deadline() }, (err, value) =>
        err ? reject(this.fromGrpcError(err)) : resolve(value!),
      )
    })
    return openResponse(method, signed, responseBytes, this.bundle, this.o.trustDomain)
  }

  warmUp(): void {
    // The channel the next call will use: connecting is what its first call would do anyway.
    // A turn later, so the work the caller starts next (key generation's first TPM command) is
    // issued before the channel's set-up takes the thread (~2 ms of JS).
    // Best effort (a closed client throws here): the call that follows reports any failure.
    setImmediate(() => {
      try {
        this.client().getChannel().getConnectivityState(true)
      } catch {
        // nothing to warm
      }
    })
  }

  close(): void {
    for (const [client, t] of this.retired) {
      clearTimeout(t)
      client.close()
    }
    this.retired.clear()
    this.strict?.client.close()
    this.insecure?.close()
  }

  /** A gRPC failure by its cause: no connection (unavailable, deadline) or what the server said. */
  private fromGrpcError(err: grpc.ServiceError): NodeCallError {
    const noConnection =
      err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED
    return transportError(err.code, err.details || err.message, this.o.address, noConnection)
  }
}
