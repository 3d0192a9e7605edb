/**
 * The agent's side of the node API over gRPC. TLS authenticates the server (its SVID must be
 * spiffe://<td>/spire/server and chain to the bundle); every call after attestation is a signed
 * envelope, and every response's signature is checked against the server SVID it carries, so the
 * same checks hold when a broker sits in between (MQTT).
 */
import { createPublicKey } from 'node:crypto'
import type { PeerCertificate } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import type { AgentNodeAttestor } from '../attestors/types.js'
import { SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import { TrustBundle } from '../spiffe/bundle.js'
import { createCsr } from '../spiffe/csr.js'
import type { TrustDomain } from '../spiffe/id.js'
import { validateX509Svid } from '../spiffe/x509-svid.js'
import {
  checkTimestamp,
  newNonce,
  requestSigningString,
  responseSigningString,
  verifySignature,
} from './envelope.js'
import { nodeServiceDefinition } from './grpc-service.js'
import {
  type CallMethod,
  type CallMethods,
  codec,
  type Init,
  required,
  type Selector,
  type SignedResponse,
  type X509SvidMessage,
} from './proto.js'

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

export interface AgentAuth {
  /** The agent's SPIFFE ID (from its SVID). */
  readonly spiffeId: string
  /** The current agent SVID chain, DER, leaf first. */
  readonly chain: readonly Uint8Array[]
  readonly signer: Signer
}

export interface AttestResult {
  readonly svid: X509SvidMessage
  readonly bundle: TrustBundle
  readonly reattestable: boolean
  readonly selectors: Selector[]
}

/**
 * A failed node API call. `status` is a gRPC code, `reason` a stable machine value. The code says
 * whose fault it is: ERR_SERVER_REFUSED only when the server answered with a refusal;
 * ERR_SERVER_UNREACHABLE when no connection could be made; ERR_SERVER_UNTRUSTED when the agent's
 * bundle does not verify what the server presented (a stale bundle, or the wrong server).
 */
export class NodeCallError extends SpiffeEdgeError {
  readonly status: number
  readonly reason: string

  constructor(
    status: number,
    reason: string,
    message: string,
    code:
      | 'ERR_SERVER_REFUSED'
      | 'ERR_SERVER_UNREACHABLE'
      | 'ERR_SERVER_UNTRUSTED' = 'ERR_SERVER_REFUSED',
    remedy?: string,
  ) {
    super(code, message, {
      remedy:
        remedy ??
        (reason === 'banned'
          ? 'the agent is banned: the server operator must evict it before it may attest again'
          : reason === 'not_attested' || reason === 'stale_svid' || reason === 'bad_svid'
            ? 'the server no longer knows this agent identity: attest again (a new join token)'
            : 'the server refused the call; the server log has details'),
    })
    this.status = status
    this.reason = reason
  }
}

const UNREACHABLE_REMEDY =
  'start the server, or check server_address/--server-address and the network (the agent retries)'
const UNTRUSTED_REMEDY =
  "the agent's bundle does not trust the server's certificate: if this is the first start, " +
  'set trust_bundle_path to the current bundle (spiffe-edge server bundle show); if the agent ' +
  'was off longer than the CA lifetime, remove its data dir and attest again'

function uriSans(cert: PeerCertificate): string[] {
  return (cert.subjectaltname ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4))
}

const GrpcNodeClient = grpc.makeGenericClientConstructor(nodeServiceDefinition, 'Node')
type RawClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>

/**
 * The TLS roots for new connections, updated whenever the bundle changes: grpc-js asks the
 * provider for the latest roots on every connection, so a CA rotation never locks the agent out
 * (pinning the bootstrap bundle did, as soon as the server SVID came from the next CA).
 */
class RootsProvider implements grpc.experimental.CertificateProvider {
  private pem: Buffer
  private readonly listeners = new Set<grpc.experimental.CaCertificateUpdateListener>()

  constructor(pem: string) {
    this.pem = Buffer.from(pem)
  }

  update(pem: string): void {
    if (this.pem.equals(Buffer.from(pem))) return
    this.pem = Buffer.from(pem)
    for (const l of this.listeners) l({ caCertificate: this.pem })
  }

  addCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.listeners.add(l)
    l({ caCertificate: this.pem })
  }
  removeCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.listeners.delete(l)
  }
  addIdentityCertificateListener(): void {}
  removeIdentityCertificateListener(): void {}
}

export class NodeClient {
  private readonly o: NodeClientOptions
  private bundle: TrustBundle | undefined
  /** Verifies the server against the current bundle; created once a bundle is known. */
  private strict: { client: RawClient; roots: RootsProvider } | undefined
  /** insecure_bootstrap only, and only until the first bundle arrives. */
  private insecure: RawClient | undefined
  private readonly serverId: string

  constructor(o: NodeClientOptions) {
    this.o = o
    this.serverId = `spiffe://${o.trustDomain.name}/spire/server`
    if (o.bundle === 'insecure') {
      this.insecure = new GrpcNodeClient(
        o.address,
        grpc.credentials.createSsl(null, null, null, {
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
    return this.strict?.client ?? this.insecure!
  }

  /** The bundle the client now trusts (updated from attestation and GetBundle). */
  currentBundle(): TrustBundle | undefined {
    return this.bundle
  }

  /**
   * Trusts `b` from now on, for both TLS and the response envelopes. The first bundle ends
   * insecure bootstrap; later ones replace the TLS roots for every new connection.
   */
  setBundle(b: TrustBundle): void {
    this.bundle = b
    const pem = b.toPem()
    if (this.strict) {
      this.strict.roots.update(pem)
      return
    }
    const roots = new RootsProvider(pem)
    const creds = grpc.experimental.createCertificateProviderChannelCredentials(roots, null, {
      rejectUnauthorized: true,
      checkServerIdentity: (h, c) => this.checkServerId(h, c),
    })
    this.strict = {
      roots,
      client: new GrpcNodeClient(
        this.o.address,
        creds,
        this.channelOptions(),
      ) as unknown as RawClient,
    }
  }

  private deadline(): Date {
    return new Date(Date.now() + (this.o.timeoutMs ?? 30_000))
  }

  /** Runs AttestAgent: sends evidence and a CSR for `signer`, answers challenges, returns the SVID. */
  attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
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
          const m = codec.attestResponse.decode(b)
          if (m.challenge) {
            const response = await attestor.respond(m.challenge)
            call.write(Buffer.from(codec.attestRequest.encode({ challengeResponse: response })))
            return
          }
          if (m.result) {
            const bundle = TrustBundle.fromSpiffeJson(this.o.trustDomain, m.result.bundle)
            this.setBundle(bundle)
            settled = true
            call.end()
            resolve({
              svid: required(m.result.svid, 'AttestAgentResponse.result.svid'),
              bundle,
              reattestable: m.result.reattestable,
              selectors: m.result.selectors,
            })
          }
        })().catch(fail)
      })
      call.on('error', (err: grpc.ServiceError) => fail(this.fromGrpcError(err)))
      call.on('end', () =>
        fail(new NodeCallError(14, 'closed', 'the server closed the attestation stream')),
      )
      void (async () => {
        const [payload, csr] = await Promise.all([attestor.payload(), createCsr(signer)])
        call.write(
          Buffer.from(
            codec.attestRequest.encode({ params: { data: { type: attestor.name, payload }, csr } }),
          ),
        )
      })().catch(fail)
    })
  }

  /** One signed call. `auth` is required for every method but GetBundle. */
  async call<M extends CallMethod>(
    method: M,
    body: Init<CallMethods[M]['request']>,
    auth?: AgentAuth,
  ): Promise<CallMethods[M]['response']> {
    const bodyBytes = codec.request(method).encode(body)
    const nonce = newNonce()
    const timestampMs = Date.now()
    const signature = auth
      ? await auth.signer.sign(
          requestSigningString(method, auth.spiffeId, timestampMs, nonce, bodyBytes),
        )
      : new Uint8Array()
    const request = codec.signedRequest.encode({
      method,
      body: bodyBytes,
      agentChain: auth ? [...auth.chain] : [],
      timestampMs,
      nonce,
      signature,
    })
    const responseBytes = await new Promise<Uint8Array>((resolve, reject) => {
      ;(
        this.client().call as (
          r: Uint8Array,
          o: grpc.CallOptions,
          cb: (e: grpc.ServiceError | null, v?: Uint8Array) => void,
        ) => void
      )(request, { deadline: this.deadline() }, (err, value) =>
        err ? reject(this.fromGrpcError(err)) : resolve(value!),
      )
    })
    const res = codec.signedResponse.decode(responseBytes)
    this.verifyResponse(method, nonce, res)
    if (res.errorCode !== 0)
      throw new NodeCallError(res.errorCode, res.errorReason, res.errorMessage)
    return codec.response(method).decode(res.body)
  }

  /** The response must be signed by the server SVID, chained to our bundle, for our nonce. */
  private verifyResponse(method: string, nonce: Uint8Array, res: SignedResponse): void {
    const bundle = this.bundle
    if (!bundle) throw new NodeCallError(16, 'no_bundle', 'no trust bundle yet: attest first')
    let leafKey: ReturnType<typeof createPublicKey>
    try {
      const v = validateX509Svid(
        res.serverChain,
        (td) => (td.equals(this.o.trustDomain) ? bundle.x509Bundle() : undefined),
        new Date(),
      )
      if (v.spiffeId.toString() !== this.serverId)
        throw new Error(`signed by ${v.spiffeId}, not the server`)
      leafKey = createPublicKey({
        key: Buffer.from(v.leaf.publicKey.rawData),
        format: 'der',
        type: 'spki',
      })
    } catch (err) {
      throw new NodeCallError(
        16,
        'bad_server_svid',
        `response not from our server: ${(err as Error).message}`,
        'ERR_SERVER_UNTRUSTED',
        UNTRUSTED_REMEDY,
      )
    }
    if (Buffer.compare(Buffer.from(res.requestNonce), Buffer.from(nonce)) !== 0) {
      throw new NodeCallError(16, 'nonce', 'response answers another request')
    }
    checkTimestamp(res.timestampMs, Date.now())
    const data = responseSigningString(method, res.timestampMs, res.requestNonce, res.body, {
      code: res.errorCode,
      message: res.errorMessage,
      reason: res.errorReason,
    })
    if (!verifySignature(leafKey, data, res.signature)) {
      throw new NodeCallError(16, 'signature', 'response signature does not verify')
    }
  }

  close(): void {
    this.strict?.client.close()
    this.insecure?.close()
  }

  /**
   * A gRPC failure as the agent should report it: a status the server sent carries its reason
   * ("… (reason)"); a connection that never came up is unreachable, or untrusted when TLS failed.
   */
  private fromGrpcError(err: grpc.ServiceError): NodeCallError {
    const details = err.details || err.message
    const m = /\(([a-z_]+)\)$/.exec(details)
    if (m) return new NodeCallError(err.code, m[1]!, details)
    if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED) {
      if (TLS_FAILURE.test(details)) {
        return new NodeCallError(
          err.code,
          'untrusted_server',
          `cannot verify the server at ${this.o.address}: ${details}`,
          'ERR_SERVER_UNTRUSTED',
          UNTRUSTED_REMEDY,
        )
      }
      return new NodeCallError(
        err.code,
        'unreachable',
        `cannot reach the server at ${this.o.address}: ${details}`,
        'ERR_SERVER_UNREACHABLE',
        UNREACHABLE_REMEDY,
      )
    }
    return new NodeCallError(err.code, 'transport', details)
  }
}

/** What OpenSSL and our identity check say when the presented certificate is not trusted. */
const TLS_FAILURE =
  /certificate|self[- ]signed|issuer|verify|server presented|CERT_|DEPTH_ZERO|SELF_SIGNED/i
