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
import { createCsr } from '../common/csr.js'
import { SpiffeEdgeError } from '../errors.js'
import type { Signer } from '../keymanager/types.js'
import { TrustBundle } from '../spiffe/bundle.js'
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

/** A call the server refused; `status` is a gRPC code, `reason` a stable machine value. */
export class NodeCallError extends SpiffeEdgeError {
  readonly status: number
  readonly reason: string

  constructor(status: number, reason: string, message: string) {
    super('ERR_SERVER_REFUSED', message, {
      remedy:
        reason === 'banned' || reason === 'not_attested' || reason === 'stale_svid'
          ? 'the agent must attest again (or be evicted first if banned)'
          : 'see the message; the server log has details',
    })
    this.status = status
    this.reason = reason
  }
}

function uriSans(cert: PeerCertificate): string[] {
  return (cert.subjectaltname ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4))
}

const GrpcNodeClient = grpc.makeGenericClientConstructor(nodeServiceDefinition, 'Node')

export class NodeClient {
  private readonly o: NodeClientOptions
  private bundle: TrustBundle | undefined
  private readonly client: grpc.Client & Record<string, (...args: unknown[]) => unknown>
  private readonly serverId: string

  constructor(o: NodeClientOptions) {
    this.o = o
    this.bundle = o.bundle === 'insecure' ? undefined : o.bundle
    this.serverId = `spiffe://${o.trustDomain.name}/spire/server`
    const roots = o.bundle === 'insecure' ? null : Buffer.from(o.bundle.toPem())
    const creds = grpc.credentials.createSsl(roots, null, null, {
      rejectUnauthorized: o.bundle !== 'insecure',
      // Identity is the SPIFFE ID, not the host name.
      checkServerIdentity: (_host: string, cert: PeerCertificate) => {
        const uris = uriSans(cert)
        if (uris.length !== 1 || uris[0] !== this.serverId) {
          return new Error(
            `server presented ${uris.join(',') || 'no URI SAN'}, expected ${this.serverId}`,
          )
        }
        return undefined
      },
    })
    this.client = new GrpcNodeClient(o.address, creds, {
      // The server SVID names localhost in its DNS SAN; the real check is the URI SAN above.
      'grpc.ssl_target_name_override': 'localhost',
    }) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>
  }

  /** The bundle the client now trusts (updated from attestation and GetBundle). */
  currentBundle(): TrustBundle | undefined {
    return this.bundle
  }

  setBundle(b: TrustBundle): void {
    this.bundle = b
  }

  private deadline(): Date {
    return new Date(Date.now() + (this.o.timeoutMs ?? 30_000))
  }

  /** Runs AttestAgent: sends evidence and a CSR for `signer`, answers challenges, returns the SVID. */
  attestAgent(attestor: AgentNodeAttestor, signer: Signer): Promise<AttestResult> {
    return new Promise<AttestResult>((resolve, reject) => {
      const call = (
        this.client.attestAgent as (
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
            this.bundle = bundle
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
      call.on('error', (err: grpc.ServiceError) => fail(fromGrpcError(err)))
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
        this.client.call as (
          r: Uint8Array,
          o: grpc.CallOptions,
          cb: (e: grpc.ServiceError | null, v?: Uint8Array) => void,
        ) => void
      )(request, { deadline: this.deadline() }, (err, value) =>
        err ? reject(fromGrpcError(err)) : resolve(value!),
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
    this.client.close()
  }
}

function fromGrpcError(err: grpc.ServiceError): NodeCallError {
  const m = /\(([a-z_]+)\)$/.exec(err.details ?? '')
  return new NodeCallError(err.code, m?.[1] ?? 'transport', err.details || err.message)
}
