/**
 * Serves the node API over gRPC with TLS, presenting the server's own SVID
 * (spiffe://<td>/spire/server). Certificates come from an in-memory provider so the server SVID and
 * the CA certificates rotate without a restart.
 */
import * as grpc from '@grpc/grpc-js'
import { nodeServiceDefinition } from '../transport/grpc-service.js'
import { codec, ProtocolError } from '../transport/proto.js'
import { type NodeApi, NodeApiError, Status } from './node-api.js'

/** Pushes new TLS material to grpc-js whenever the server SVID or bundle changes. */
type CaCertificateUpdateListener = grpc.experimental.CaCertificateUpdateListener
type IdentityCertificateUpdateListener = grpc.experimental.IdentityCertificateUpdateListener

export class MemoryCertificateProvider implements grpc.experimental.CertificateProvider {
  private ca: Buffer | undefined
  private identity: { certificate: Buffer; privateKey: Buffer } | undefined
  private readonly caListeners = new Set<CaCertificateUpdateListener>()
  private readonly idListeners = new Set<IdentityCertificateUpdateListener>()

  update(identity: { certificatePem: string; privateKeyPem: string }, caPem: string): void {
    this.identity = {
      certificate: Buffer.from(identity.certificatePem),
      privateKey: Buffer.from(identity.privateKeyPem),
    }
    this.ca = Buffer.from(caPem)
    for (const l of this.caListeners) l({ caCertificate: this.ca })
    for (const l of this.idListeners) l(this.identity)
  }

  addCaCertificateListener(l: CaCertificateUpdateListener): void {
    this.caListeners.add(l)
    // Deliver on a later tick: grpc-js registers its watcher only after adding the listener, so a
    // synchronous first update would be lost and the server would drop every connection.
    const ca = this.ca
    if (ca) setImmediate(() => this.caListeners.has(l) && l({ caCertificate: ca }))
  }
  removeCaCertificateListener(l: CaCertificateUpdateListener): void {
    this.caListeners.delete(l)
  }
  addIdentityCertificateListener(l: IdentityCertificateUpdateListener): void {
    this.idListeners.add(l)
    const id = this.identity
    if (id) setImmediate(() => this.idListeners.has(l) && l(id))
  }
  removeIdentityCertificateListener(l: IdentityCertificateUpdateListener): void {
    this.idListeners.delete(l)
  }
}

function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof NodeApiError)
    return { code: err.status, details: `${err.message} (${err.reason})` }
  if (err instanceof ProtocolError) return { code: Status.INVALID_ARGUMENT, details: err.message }
  return { code: Status.INTERNAL, details: 'internal error' }
}

/**
 * Receive limits (the node API is reachable before any authentication). Calls: the largest
 * legitimate request is a BatchNewX509SVID of 500 CSRs (~600 KiB with RSA-4096 keys).
 * AttestAgent: a TPM payload or challenge response is at most 64 KiB, plus the CSR; an agent may
 * not run ahead of the exchange by more than a few messages.
 */
export const MAX_RECEIVE_MESSAGE = 1 << 20
export const MAX_ATTEST_MESSAGE = 128 << 10
const MAX_ATTEST_QUEUED = 4

export interface NodeGrpcServer extends AsyncDisposable {
  readonly port: number
  close(): Promise<void>
}

export async function startNodeGrpcServer(
  api: NodeApi,
  provider: MemoryCertificateProvider,
  bindAddress: string,
  port: number,
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void,
): Promise<NodeGrpcServer> {
  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE })
  server.addService(nodeServiceDefinition, {
    attestAgent(call: grpc.ServerDuplexStream<Uint8Array, Uint8Array>) {
      const queue: Uint8Array[] = []
      const waiters: { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }[] = []
      let ended = false
      let overflow: string | undefined
      const finish = () => {
        ended = true
        const why = overflow ?? 'the agent closed the attestation stream'
        for (const w of waiters.splice(0)) w.reject(new ProtocolError(why))
      }
      call.on('data', (b: Uint8Array) => {
        if (ended) return
        if (b.length > MAX_ATTEST_MESSAGE || queue.length >= MAX_ATTEST_QUEUED) {
          overflow =
            b.length > MAX_ATTEST_MESSAGE
              ? `an AttestAgent message is over ${MAX_ATTEST_MESSAGE} bytes`
              : 'the agent sent AttestAgent messages ahead of the exchange'
          queue.length = 0
          finish()
          return
        }
        const w = waiters.shift()
        if (w) w.resolve(b)
        else queue.push(b)
      })
      call.on('end', finish)
      call.on('error', finish)
      call.on('cancelled', finish)
      const receive = () =>
        new Promise<Uint8Array>((resolve, reject) => {
          const b = queue.shift()
          if (b) return resolve(b)
          if (ended)
            return reject(new ProtocolError(overflow ?? 'the agent closed the attestation stream'))
          waiters.push({ resolve, reject })
        }).then((b) => codec.attestRequest.decode(b))
      api
        .attestAgent({
          peer: call.getPeer().replace(/:\d+$/, ''),
          receive,
          send: (m) =>
            new Promise<void>((resolve, reject) => {
              call.write(Buffer.from(codec.attestResponse.encode(m)), (err?: Error | null) =>
                err ? reject(err) : resolve(),
              )
            }),
        })
        .then(() => call.end())
        .catch((err: unknown) => {
          const status = toServiceError(err)
          log?.('warn', 'AttestAgent refused', { peer: call.getPeer(), details: status.details })
          call.emit('error', { ...status, metadata: new grpc.Metadata() })
        })
    },
    call(
      call: grpc.ServerUnaryCall<Uint8Array, Uint8Array>,
      callback: grpc.sendUnaryData<Uint8Array>,
    ) {
      api
        .call(call.request)
        .then((res) => callback(null, codec.signedResponse.encode(res)))
        .catch((err: unknown) => callback(toServiceError(err) as grpc.ServiceError))
    },
  })
  const creds = grpc.experimental.createCertificateProviderServerCredentials(provider, null, false)
  const bound = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${bindAddress}:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p)))
  })
  const close = () =>
    new Promise<void>((resolve) => {
      server.tryShutdown(() => resolve())
      // In-flight streams get a moment, then go.
      setTimeout(() => server.forceShutdown(), 3000).unref()
    })
  return { port: bound, close, [Symbol.asyncDispose]: close }
}
