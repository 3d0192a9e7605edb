/**
 * Envoy SDS v3 (envoy.service.secret.v3.SecretDiscoveryService) on the Workload API socket, as
 * SPIRE's agent serves it: callers are attested exactly like Workload API callers (middleware.ts,
 * per call, with the liveness re-check) but send no security header, since Envoy does not.
 *
 * The stream follows the xDS state-of-the-world protocol as SPIRE implements it: a response is
 * sent when the requested names change or the workload's SVIDs/bundles change; each carries a
 * fresh nonce and a per-stream version counter; a request echoing an older nonce is stale and
 * ignored; an ACK or a NACK (error_detail set) of the last response with the same names sends
 * nothing, so a client that cannot apply a secret does not make us loop.
 */
import { randomBytes } from 'node:crypto'
import type * as grpc from '@grpc/grpc-js'
import type { Log } from '../../common/log.js'
import type { TrustDomain } from '../../spiffe/id.js'
import { GrpcStatus, WorkloadStatusError } from './errors.js'
import type { Middleware } from './middleware.js'
import { type DiscoveryRequestMsg, lazySdsCodec, type SdsCodec } from './sds-proto.js'
import {
  buildSdsResponse,
  checkSdsRequest,
  DEFAULT_SDS_NAMES,
  type SdsNames,
} from './sds-resources.js'
import { type CallSignal, StreamState } from './stream-state.js'
import type { WorkloadSource, X509Update } from './types.js'

export { sdsServiceDefinition } from './sds-proto.js'
export { DEFAULT_SDS_NAMES, type SdsNames } from './sds-resources.js'

export interface SdsOptions {
  readonly source: WorkloadSource
  readonly trustDomain: TrustDomain
  readonly names?: SdsNames | undefined
  readonly log: Log
  /** Counts a client's stream cancel against its connection's reset budget (endpoint.ts). */
  readonly noteReset?: (peer: string) => void
}

/** Client-chosen strings go into logs cut short: a request may be up to 1 MiB. */
const clip = (v: string): string => (v.length > 128 ? `${v.slice(0, 128)}…` : v)

const nextNonce = (): string => randomBytes(8).toString('hex')

const NO_IDENTITY = () =>
  new WorkloadStatusError(GrpcStatus.PERMISSION_DENIED, 'no identity issued')

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false
  const s = new Set(a)
  return b.every((n) => s.has(n))
}

type Duplex = grpc.ServerDuplexStream<Uint8Array, Uint8Array>

export function sdsHandlers(opts: SdsOptions, mw: Middleware): grpc.UntypedServiceImplementation {
  const codec: SdsCodec = lazySdsCodec()
  const names = opts.names ?? DEFAULT_SDS_NAMES
  const ownTd = opts.trustDomain.name
  const { log } = opts

  function streamSecrets(call: Duplex): void {
    // StreamState only writes and watches the call's end; a duplex call does both like a writable.
    const peer = call.getPeer() // after a cancel, getPeer() no longer knows the socket
    const s = new StreamState(
      call as unknown as grpc.ServerWritableStream<Uint8Array, Uint8Array>,
      () => opts.noteReset?.(peer),
    )
    let version = 0
    let lastNonce = ''
    let lastReq: DiscoveryRequestMsg | undefined
    let upd: X509Update | undefined
    let lastNode: DiscoveryRequestMsg['node']

    const respond = () => {
      if (s.closed || lastReq === undefined || upd === undefined) return
      const nonce = nextNonce()
      const res = buildSdsResponse(codec, names, ownTd, lastReq, upd, String(version), nonce)
      lastNonce = nonce
      log('debug', 'sending SDS response', { version, nonce, count: res.resources.length })
      s.send(codec.encodeResponse(res))
    }
    const guarded = (fn: () => void) => {
      try {
        fn()
      } catch (err) {
        s.fail(mw.statusOf(err))
      }
    }

    const onRequest = (b: Uint8Array) =>
      guarded(() => {
        if (s.closed) return
        let req = codec.decodeRequest(b)
        checkSdsRequest(req)
        // Envoy may send its node only in a stream's first request; the version it reports there
        // picks the validation context format for the whole stream.
        if (req.node) lastNode = req.node
        else if (lastNode) req = { ...req, node: lastNode }
        if (req.errorDetail) {
          log('error', 'Envoy reported errors applying secrets', {
            resources: req.resourceNames.slice(0, 8).map(clip),
            error: String(req.errorDetail.message ?? '').slice(0, 1000),
          })
        }
        if (lastNonce !== '') {
          if (req.responseNonce !== lastNonce) {
            // A reply to a response that has since been replaced: the newer one answers it.
            log('warn', 'SDS request with an unexpected nonce ignored', {
              nonce: clip(req.responseNonce),
            })
            return
          }
          if (req.versionInfo !== String(version)) {
            log('error', 'SDS client rejected the last version and rolled back', {
              version: clip(req.versionInfo),
              expected: String(version),
            })
          }
        }
        const changed =
          lastReq === undefined || !sameNames(lastReq.resourceNames, req.resourceNames)
        lastReq = req
        // An ACK, or a NACK with the same names: answering again would send what was refused.
        if (changed) respond()
      })

    call.on('data', onRequest)
    call.on('end', () => {
      // The client half-closed: it will ask nothing more, so the stream ends cleanly (as SPIRE).
      if (!s.closed) {
        s.close()
        call.end()
      }
    })
    call.on('error', () => s.close())

    mw.attest(call as never, s.abort)
      .then((selectors) => {
        if (s.closed) return
        s.hold(
          opts.source.subscribeX509(selectors, (u) =>
            guarded(() => {
              if (s.closed) return
              if (u.svids.length === 0) return s.fail(NO_IDENTITY())
              upd = u
              version++
              respond()
            }),
          ),
        )
      })
      .catch((err: unknown) => {
        if (!s.closed) s.fail(mw.statusOf(err))
      })
  }

  /** The caller's current state once: the first update of a subscription, then unsubscribe. */
  function currentUpdate(
    selectors: Parameters<WorkloadSource['subscribeX509']>[0],
    signal: CallSignal,
  ): Promise<X509Update> {
    return new Promise((resolve, reject) => {
      let unsub: (() => void) | undefined
      let done = false
      const finish = (fn: () => void) => {
        if (done) return
        done = true
        signal.removeEventListener('abort', onAbort)
        queueMicrotask(() => unsub?.())
        fn()
      }
      const onAbort = () => finish(() => reject(signal.reason))
      signal.addEventListener('abort', onAbort, { once: true })
      unsub = opts.source.subscribeX509(selectors, (u) => finish(() => resolve(u)))
    })
  }

  return {
    StreamSecrets: streamSecrets,
    FetchSecrets: mw.unary(async (call, signal) => {
      const req = codec.decodeRequest(call.request)
      checkSdsRequest(req)
      const selectors = await mw.attest(call, signal)
      const u = await currentUpdate(selectors, signal)
      if (u.svids.length === 0) throw NO_IDENTITY()
      // Unary: no version or nonce to acknowledge (SPIRE sends both empty).
      return codec.encodeResponse(buildSdsResponse(codec, names, ownTd, req, u, '', ''))
    }, false),
    DeltaSecrets: (call: Duplex) => {
      call.emit('error', {
        code: GrpcStatus.UNIMPLEMENTED,
        details: 'DeltaSecrets is not implemented',
      })
    },
  }
}
