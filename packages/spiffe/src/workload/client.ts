/**
 * A small SPIFFE Workload API client for the sources: one grpc-js connection, server streams for
 * the watches, unary calls for JWT-SVIDs. Every call carries the `workload.spiffe.io: true`
 * header the spec requires; every failure is a WorkloadApiError with the gRPC status.
 */
import * as grpc from '@grpc/grpc-js'
import {
  type EndpointAddress,
  grpcTarget,
  parseEndpointAddress,
  SOCKET_ENV,
} from '../../../../src/agent/workload-api/addr.js'
import {
  GrpcStatus,
  WorkloadApiError,
  WorkloadEndpointError,
} from '../../../../src/agent/workload-api/errors.js'
import {
  decode,
  encode,
  type JwtSvidMsg,
  structToJson,
  type ValidateJwtSvidResponseMsg,
} from './proto.js'

export type { EndpointAddress }
export { GrpcStatus, WorkloadApiError }

const SERVICE = 'SpiffeWorkloadAPI'
/** A Workload API message larger than this is refused (bundles with many CAs stay far below). */
export const MAX_MESSAGE_BYTES = 16 << 20

export interface ClientOptions {
  /** unix:///path or tcp://ip:port; default: SPIFFE_ENDPOINT_SOCKET. */
  readonly address?: string
  /** Deadline of unary calls in ms; default 5000. */
  readonly timeoutMs?: number
}

export interface StreamHandle {
  cancel(): void
}

export interface RawWorkloadClient {
  readonly address: EndpointAddress
  /** Opens a server stream; `onMessage` gets each message, `onEnd` the error that ended it. */
  stream(
    method: 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles',
    onMessage: (b: Uint8Array) => void,
    onEnd: (err: WorkloadApiError) => void,
  ): StreamHandle
  fetchJwtSvids(audience: readonly string[], spiffeId?: string): Promise<JwtSvidMsg[]>
  validateJwtSvid(token: string, audience: string): Promise<ValidateJwtSvidResponseMsg>
  close(): void
}

/** The address to use: the option, else SPIFFE_ENDPOINT_SOCKET, else a coded error. */
export function resolveAddress(address: string | undefined): EndpointAddress {
  const a = address ?? process.env[SOCKET_ENV]
  if (a === undefined || a === '') {
    throw new WorkloadEndpointError(
      `no Workload API address: pass { address } or set ${SOCKET_ENV}`,
      `set ${SOCKET_ENV}=unix:///path/to/agent.sock (the agent's socket_path)`,
    )
  }
  return parseEndpointAddress(a)
}

const toBuf = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)
const fromBuf = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

export function toApiError(err: unknown): WorkloadApiError {
  if (err instanceof WorkloadApiError) return err
  const e = err as Partial<grpc.ServiceError> | undefined
  if (typeof e?.code === 'number') return new WorkloadApiError(e.code, e.details ?? '', err)
  return new WorkloadApiError(GrpcStatus.UNKNOWN, (err as Error)?.message ?? String(err), err)
}

export function connectWorkloadApi(opts: ClientOptions = {}): RawWorkloadClient {
  const address = resolveAddress(opts.address)
  const timeoutMs = opts.timeoutMs ?? 5000
  const client = new grpc.Client(grpcTarget(address), grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    // Each source owns its connection: closing one never cuts another's stream.
    'grpc.use_local_subchannel_pool': 1,
    // grpc-js alone would back reconnects off to 2 minutes; the sources pace their own retries.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 2000,
  })
  const md = (): grpc.Metadata => {
    const m = new grpc.Metadata()
    m.set('workload.spiffe.io', 'true')
    return m
  }
  function unary(method: string, req: Uint8Array): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      client.makeUnaryRequest(
        `/${SERVICE}/${method}`,
        toBuf,
        fromBuf,
        req,
        md(),
        { deadline: new Date(Date.now() + timeoutMs) },
        (err, res) => {
          if (err || res === undefined) reject(toApiError(err ?? new Error('empty response')))
          else resolve(res)
        },
      )
    })
  }
  return {
    address,
    stream(method, onMessage, onEnd) {
      const call = client.makeServerStreamRequest(
        `/${SERVICE}/${method}`,
        toBuf,
        fromBuf,
        new Uint8Array(0),
        md(),
      )
      let ended = false
      const end = (err: WorkloadApiError) => {
        if (ended) return
        ended = true
        onEnd(err)
      }
      call.on('data', (b: Uint8Array) => {
        if (!ended) onMessage(b)
      })
      call.on('error', (err) => end(toApiError(err)))
      call.on('end', () =>
        end(new WorkloadApiError(GrpcStatus.UNAVAILABLE, `the ${method} stream ended`)),
      )
      return {
        cancel() {
          ended = true
          call.cancel()
        },
      }
    },
    async fetchJwtSvids(audience, spiffeId) {
      const req = encode('JWTSVIDRequest', { audience: [...audience], spiffeId: spiffeId ?? '' })
      const res = decode<{ svids: JwtSvidMsg[] }>(
        'JWTSVIDResponse',
        await unary('FetchJWTSVID', req),
      )
      return res.svids
    },
    async validateJwtSvid(token, audience) {
      const req = encode('ValidateJWTSVIDRequest', { audience, svid: token })
      const res = decode<{ spiffeId: string; claims?: unknown }>(
        'ValidateJWTSVIDResponse',
        await unary('ValidateJWTSVID', req),
      )
      return { spiffeId: res.spiffeId, claims: structToJson(res.claims) }
    },
    close() {
      client.close()
    },
  }
}
