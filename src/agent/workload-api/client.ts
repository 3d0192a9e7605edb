/**
 * A SPIFFE Workload API client (what the `spiffe-edge api` commands and tests use). Every call
 * carries the `workload.spiffe.io: true` header; every failure is a WorkloadApiError with the
 * gRPC status, so callers can tell retryable (Unavailable, PermissionDenied) from final errors.
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import * as grpc from '@grpc/grpc-js'
import { readTlv } from '../../spiffe/der.js'
import { type EndpointAddress, grpcTarget, parseEndpointAddress } from './addr.js'
import { GrpcStatus, WorkloadApiError, WorkloadProtocolError } from './errors.js'
import { workloadCodec } from './proto.js'
import { HEALTH_SERVICE, SECURITY_HEADER, WORKLOAD_SERVICE } from './service.js'

export interface ClientX509Svid {
  readonly spiffeId: string
  /** DER certificates, leaf first. */
  readonly chain: Uint8Array[]
  /** PKCS#8 DER. */
  readonly privateKey: Uint8Array
  /** The X.509 authorities (DER) of the SVID's trust domain. */
  readonly bundle: Uint8Array[]
  readonly hint: string
}

export interface ClientX509Response {
  readonly svids: ClientX509Svid[]
  /** Federated X.509 authorities keyed as sent: 'spiffe://<td>'. */
  readonly federatedBundles: Map<string, Uint8Array[]>
}

export interface ClientJwtSvid {
  readonly spiffeId: string
  readonly token: string
  readonly hint: string
}

export interface ClientValidatedJwt {
  readonly spiffeId: string
  readonly claims: Record<string, unknown>
}

export interface WorkloadClientOptions {
  /** Deadline for unary calls and for the first message of a fetch; default 5000 ms. */
  readonly timeoutMs?: number
  /** A connection of its own (grpc-js otherwise shares one per target within a process). */
  readonly ownConnection?: boolean
}

export interface WatchOptions {
  /** Called on a stream error before the watch retries (go-spiffe's linear 1..30 s backoff). */
  readonly onError?: (err: WorkloadApiError) => void
  /** Retry after errors other than InvalidArgument; default true. */
  readonly retry?: boolean
}

export interface WorkloadClient {
  readonly address: EndpointAddress
  fetchX509(): Promise<ClientX509Response>
  /** Resolves when `signal` aborts; rejects on InvalidArgument (or any error without retry). */
  watchX509(
    onUpdate: (u: ClientX509Response) => void,
    signal: AbortSignal,
    opts?: WatchOptions,
  ): Promise<void>
  fetchJwt(audience: readonly string[], spiffeId?: string): Promise<ClientJwtSvid[]>
  /** X.509 authorities by trust domain key ('spiffe://<td>'). */
  fetchX509Bundles(): Promise<Map<string, Uint8Array[]>>
  /** JWKS JSON by trust domain key ('spiffe://<td>'). */
  fetchJwtBundles(): Promise<Map<string, string>>
  validateJwt(audience: string, token: string): Promise<ClientValidatedJwt>
  /** grpc.health.v1 Check: 'SERVING', 'NOT_SERVING', ... */
  health(): Promise<string>
  close(): void
}

const HEALTH_NAMES = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'] as const

const bytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)
const raw = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

/** Concatenated DER certificates → one Uint8Array per certificate. */
export function splitDer(buf: Uint8Array, what: string): Uint8Array[] {
  const out: Uint8Array[] = []
  let off = 0
  try {
    while (off < buf.length) {
      const t = readTlv(buf, off, what)
      out.push(buf.slice(off, t.end))
      off = t.end
    }
  } catch (err) {
    throw new WorkloadProtocolError(`${what} is not concatenated DER: ${(err as Error).message}`)
  }
  return out
}

function toApiError(err: unknown): WorkloadApiError {
  if (err instanceof WorkloadApiError) return err
  const e = err as Partial<grpc.ServiceError>
  if (typeof e?.code === 'number') return new WorkloadApiError(e.code, e.details ?? '', err)
  return new WorkloadApiError(GrpcStatus.UNKNOWN, (err as Error)?.message ?? String(err), err)
}

/** Checks what go-spiffe's ParseRaw checks cheaply: chain parses, key is PKCS#8 for the leaf. */
function parseSvid(m: {
  spiffeId: string
  x509Svid: Uint8Array
  x509SvidKey: Uint8Array
  bundle: Uint8Array
  hint: string
}): ClientX509Svid {
  const chain = splitDer(m.x509Svid, `x509_svid of ${m.spiffeId}`)
  const leafDer = chain[0]
  if (leafDer === undefined)
    throw new WorkloadProtocolError(`SVID ${m.spiffeId} has no certificate`)
  let matches: boolean
  try {
    const leafSpki = new X509Certificate(leafDer).publicKey.export({ type: 'spki', format: 'der' })
    const priv = createPrivateKey({ key: bytes(m.x509SvidKey), format: 'der', type: 'pkcs8' })
    matches = leafSpki.equals(createPublicKey(priv).export({ type: 'spki', format: 'der' }))
  } catch (err) {
    throw new WorkloadProtocolError(`SVID ${m.spiffeId}: ${(err as Error).message}`)
  }
  if (!matches) {
    throw new WorkloadProtocolError(`SVID ${m.spiffeId}: the private key does not match the leaf`)
  }
  return {
    spiffeId: m.spiffeId,
    chain,
    privateKey: m.x509SvidKey,
    bundle: splitDer(m.bundle, `bundle of ${m.spiffeId}`),
    hint: m.hint,
  }
}

function parseX509Response(b: Uint8Array): ClientX509Response {
  const m = workloadCodec.x509SvidResponse.decode(b)
  if (m.svids.length === 0) throw new WorkloadProtocolError('no SVIDs in response')
  const federatedBundles = new Map<string, Uint8Array[]>()
  for (const [k, v] of Object.entries(m.federatedBundles)) {
    federatedBundles.set(k, splitDer(v, `federated bundle ${k}`))
  }
  return { svids: m.svids.map(parseSvid), federatedBundles }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms)
    function done() {
      clearTimeout(t)
      signal.removeEventListener('abort', done)
      resolve()
    }
    signal.addEventListener('abort', done, { once: true })
  })
}

export function workloadClient(addr: string, opts: WorkloadClientOptions = {}): WorkloadClient {
  const address = parseEndpointAddress(addr)
  const timeoutMs = opts.timeoutMs ?? 5000
  const client = new grpc.Client(grpcTarget(address), grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 << 20,
    ...(opts.ownConnection ? { 'grpc.use_local_subchannel_pool': 1 } : {}),
  })
  const md = (): grpc.Metadata => {
    const m = new grpc.Metadata()
    m.set(SECURITY_HEADER, 'true')
    return m
  }
  const deadline = () => new Date(Date.now() + timeoutMs)

  function unary(path: string, req: Uint8Array, header = true): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      client.makeUnaryRequest(
        path,
        bytes,
        raw,
        req,
        header ? md() : new grpc.Metadata(),
        { deadline: deadline() },
        (err, res) => {
          if (err || res === undefined) reject(toApiError(err ?? new Error('empty response')))
          else resolve(res)
        },
      )
    })
  }

  /** Opens a server stream and returns its first message, then cancels the stream. */
  function first(path: string): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const call = client.makeServerStreamRequest(path, bytes, raw, new Uint8Array(0), md(), {
        deadline: deadline(),
      })
      let settled = false
      call.on('data', (b: Uint8Array) => {
        if (settled) return
        settled = true
        resolve(b)
        call.cancel()
      })
      call.on('error', (err) => {
        if (settled) return
        settled = true
        reject(toApiError(err))
      })
      call.on('end', () => {
        if (settled) return
        settled = true
        reject(new WorkloadApiError(GrpcStatus.UNAVAILABLE, 'the stream ended without a message'))
      })
    })
  }

  /** One stream until it ends or fails; resolves on clean end or abort. */
  function stream(
    path: string,
    onMessage: (b: Uint8Array) => void,
    signal: AbortSignal,
    onFirst: () => void,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const call = client.makeServerStreamRequest(path, bytes, raw, new Uint8Array(0), md())
      let done = false
      const finish = (err?: WorkloadApiError) => {
        if (done) return
        done = true
        signal.removeEventListener('abort', onAbort)
        if (err) reject(err)
        else resolve()
      }
      const onAbort = () => {
        call.cancel()
        finish()
      }
      signal.addEventListener('abort', onAbort, { once: true })
      if (signal.aborted) onAbort()
      call.on('data', (b: Uint8Array) => {
        if (done) return
        onFirst()
        try {
          onMessage(b)
        } catch (err) {
          call.cancel()
          finish(
            err instanceof WorkloadApiError
              ? err
              : new WorkloadApiError(GrpcStatus.INTERNAL, (err as Error).message, err),
          )
        }
      })
      call.on('error', (err) => finish(signal.aborted ? undefined : toApiError(err)))
      call.on('end', () => finish())
    })
  }

  return {
    address,
    async fetchX509() {
      return parseX509Response(await first(`/${WORKLOAD_SERVICE}/FetchX509SVID`))
    },
    async watchX509(onUpdate, signal, wopts = {}) {
      let attempt = 0
      while (!signal.aborted) {
        try {
          await stream(
            `/${WORKLOAD_SERVICE}/FetchX509SVID`,
            (b) => onUpdate(parseX509Response(b)),
            signal,
            () => {
              attempt = 0
            },
          )
          if (signal.aborted) return
          throw new WorkloadApiError(GrpcStatus.UNAVAILABLE, 'the watch stream ended')
        } catch (err) {
          const e = toApiError(err)
          if (e.status === GrpcStatus.CANCELLED && signal.aborted) return
          wopts.onError?.(e)
          if (wopts.retry === false || e.status === GrpcStatus.INVALID_ARGUMENT) throw e
          attempt++
          await sleep(Math.min(attempt, 30) * 1000, signal)
        }
      }
    },
    async fetchJwt(audience, spiffeId) {
      const req = workloadCodec.jwtSvidRequest.encode({
        audience: [...audience],
        spiffeId: spiffeId ?? '',
      })
      const res = workloadCodec.jwtSvidResponse.decode(
        await unary(`/${WORKLOAD_SERVICE}/FetchJWTSVID`, req),
      )
      if (res.svids.length === 0) throw new WorkloadProtocolError('no JWT-SVIDs in response')
      return res.svids.map((s) => ({ spiffeId: s.spiffeId, token: s.svid, hint: s.hint }))
    },
    async fetchX509Bundles() {
      const m = workloadCodec.x509BundlesResponse.decode(
        await first(`/${WORKLOAD_SERVICE}/FetchX509Bundles`),
      )
      const out = new Map<string, Uint8Array[]>()
      for (const [k, v] of Object.entries(m.bundles)) out.set(k, splitDer(v, `bundle ${k}`))
      return out
    },
    async fetchJwtBundles() {
      const m = workloadCodec.jwtBundlesResponse.decode(
        await first(`/${WORKLOAD_SERVICE}/FetchJWTBundles`),
      )
      const out = new Map<string, string>()
      for (const [k, v] of Object.entries(m.bundles)) out.set(k, new TextDecoder().decode(v))
      return out
    },
    async validateJwt(audience, token) {
      const req = workloadCodec.validateJwtSvidRequest.encode({ audience, svid: token })
      const res = workloadCodec.validateJwtSvidResponse.decode(
        await unary(`/${WORKLOAD_SERVICE}/ValidateJWTSVID`, req),
      )
      return { spiffeId: res.spiffeId, claims: res.claims }
    },
    async health() {
      const res = workloadCodec.healthResponse.decode(
        await unary(
          `/${HEALTH_SERVICE}/Check`,
          workloadCodec.healthRequest.encode({ service: '' }),
          false,
        ),
      )
      return HEALTH_NAMES[res.status] ?? `STATUS_${res.status}`
    },
    close() {
      client.close()
    },
  }
}
