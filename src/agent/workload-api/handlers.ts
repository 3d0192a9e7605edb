/**
 * The SPIFFE Workload API methods: what each call returns for an attested caller, composed from
 * the WorkloadSource (the agent's cache) only, so a server outage never stalls a workload.
 * Separate from the transport and the checks around each call: this file is the spec mapping
 * (message shapes, hint de-duplication, bundle gating, JWT claim filtering) and nothing else.
 */
import type * as grpc from '@grpc/grpc-js'
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js'
import type { validateJwtSvid } from '../../spiffe/jwt-svid.js'
import { GrpcStatus, WorkloadStatusError } from './errors.js'
import {
  bytesKey,
  CodecCache,
  JWT_CODEC_KEY_MAX_BYTES,
  LastOne,
  sameBytes,
} from './jwt-codec-cache.js'
import type { Middleware } from './middleware.js'
import { checkHeader } from './middleware.js'
import {
  type JwtSvidMsg,
  workloadCodec,
  type X509SvidMsg,
  type X509SvidResponseMsg,
} from './proto.js'
import { StreamState, toBuffer } from './stream-state.js'
import {
  audienceProblem,
  type BundlesUpdate,
  type JwtSvidResult,
  type WorkloadSource,
  type X509Update,
} from './types.js'
import { X509EncodeCache } from './x509-encode-cache.js'

const PERMISSION_DENIED = () =>
  new WorkloadStatusError(GrpcStatus.PERMISSION_DENIED, 'no identity issued')

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(parts.map(toBuffer))
}

/** 'example.org' → 'spiffe://example.org' (tolerating keys that already carry the scheme). */
function tdKey(td: string): string {
  return td.startsWith('spiffe://') ? td : `spiffe://${td}`
}

function sortedRecord<V>(entries: Iterable<[string, V]>): Record<string, V> {
  const out: Record<string, V> = {}
  for (const [k, v] of [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) out[k] = v
  return out
}

/** Keeps the first of each non-empty hint: the spec makes hints unique within a response. */
function dedupeHints<T extends { readonly hint: string }>(items: readonly T[]): T[] {
  const seen = new Set<string>()
  return items.filter((i) => {
    if (i.hint === '') return true
    if (seen.has(i.hint)) return false
    seen.add(i.hint)
    return true
  })
}

interface ParsedJwtRequest {
  readonly audience: readonly string[]
  /** The SPIFFE ID asked for, normalized; undefined: every identity of the caller. */
  readonly wanted: string | undefined
}

/** A FetchJWTSVID request, decoded strictly and checked; a pure function of its bytes. */
function parseJwtRequest(bytes: Uint8Array): ParsedJwtRequest {
  const req = workloadCodec.jwtSvidRequest.decode(bytes)
  const bad = audienceProblem(req.audience)
  if (bad !== undefined) throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, bad)
  let wanted: string | undefined
  if (req.spiffeId !== '') {
    try {
      wanted = SpiffeId.parse(req.spiffeId).toString()
    } catch (err) {
      throw new WorkloadStatusError(
        GrpcStatus.INVALID_ARGUMENT,
        `invalid requested SPIFFE ID: ${(err as Error).message}`,
      )
    }
  }
  return Object.freeze({ audience: Object.freeze([...req.audience]), wanted })
}

/** Same SPIFFE IDs, tokens and hints in the same order: the response would be the same bytes. */
function sameResults(a: readonly JwtSvidResult[], b: readonly JwtSvidResult[]): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!
    const y = b[i]!
    if (x.spiffeId !== y.spiffeId || x.token !== y.token || x.hint !== y.hint) return false
  }
  return true
}

/** A string as an unambiguous key part (its length first, so no separator can be forged). */
const lengthKey = (s: string) => `${s.length}:${s}`

export interface HandlerOptions {
  readonly source: WorkloadSource
  readonly trustDomain: TrustDomain
  readonly allowUnauthenticatedVerifiers?: boolean
  readonly log: Log
}

export function workloadHandlers(
  opts: HandlerOptions,
  mw: Middleware,
): grpc.UntypedServiceImplementation {
  const { source, log } = opts
  const ownTd = opts.trustDomain.name
  const { attest, statusOf, unary, streaming } = mw

  function composeX509(u: X509Update): X509SvidResponseMsg {
    const svids: X509SvidMsg[] = []
    for (const s of dedupeHints(u.svids)) {
      let td: string
      try {
        td = SpiffeId.parse(s.spiffeId).trustDomain.name
      } catch {
        log('error', 'the cache holds an SVID with an invalid SPIFFE ID', { entry: s.entryId })
        continue
      }
      svids.push({
        spiffeId: s.spiffeId,
        x509Svid: concat(s.chain),
        x509SvidKey: s.privateKey,
        bundle: concat(u.bundles.get(td) ?? []),
        hint: s.hint,
      })
    }
    const federated = [...u.bundles]
      .filter(([td]) => td !== ownTd && tdKey(td) !== tdKey(ownTd))
      .map(([td, certs]): [string, Uint8Array] => [tdKey(td), concat(certs)])
    return { svids, crl: [], federatedBundles: sortedRecord(federated) }
  }

  const encoded = new X509EncodeCache()
  // Parsed requests and encoded responses of FetchJWTSVID, by their exact inputs (see the file).
  const jwtRequests = new CodecCache<ParsedJwtRequest>()
  const jwtResponses = new CodecCache<Uint8Array>()
  // The last request and the last answer, checked before the maps (see LastOne). Requests too
  // large for the map are not remembered here either.
  const lastJwtRequest = new LastOne<Uint8Array, ParsedJwtRequest>(sameBytes)
  const lastJwtResponse = new LastOne<readonly JwtSvidResult[], Uint8Array>(sameResults)
  const parseJwt = (bytes: Uint8Array): ParsedJwtRequest =>
    bytes.byteLength > JWT_CODEC_KEY_MAX_BYTES
      ? parseJwtRequest(bytes)
      : lastJwtRequest.get(
          bytes,
          () => jwtRequests.get(bytesKey(bytes), () => parseJwtRequest(bytes)),
          (b) => Uint8Array.from(b),
        )
  const encodeX509 = (u: X509Update): Uint8Array | undefined => {
    const msg = composeX509(u)
    return msg.svids.length === 0 ? undefined : workloadCodec.x509SvidResponse.encode(msg)
  }

  /** Bundle streams: gated on the caller having an identity, identical messages skipped. */
  function bundleStream(
    requestName: string,
    encode: (u: BundlesUpdate) => Uint8Array,
  ): ReturnType<typeof streaming> {
    return streaming(requestName, (s, selectors) => {
      let entitled: boolean | undefined = opts.allowUnauthenticatedVerifiers ? true : undefined
      let latest: BundlesUpdate | undefined
      let last: Buffer | undefined
      // Federated bundles only of the domains the caller's entries federate with (SPIRE); a
      // caller without identity (allow_unauthenticated_verifiers) gets our own domain's only.
      let domains: ReadonlySet<string> = new Set([ownTd])
      const push = () => {
        if (entitled === undefined || latest === undefined) return
        if (!entitled) return s.fail(PERMISSION_DENIED())
        const keep = <V>(m: ReadonlyMap<string, V>) =>
          new Map([...m].filter(([td]) => domains.has(td)))
        const msg = toBuffer(encode({ x509: keep(latest.x509), jwt: keep(latest.jwt) }))
        if (last?.equals(msg)) return
        last = msg
        s.send(msg)
      }
      if (!opts.allowUnauthenticatedVerifiers) {
        s.hold(
          source.subscribeX509(selectors, (u) => {
            entitled = u.svids.length > 0
            domains = new Set([ownTd, ...u.bundles.keys()])
            push()
          }),
        )
      }
      if (s.closed) return
      s.hold(
        source.subscribeBundles((u) => {
          latest = u
          push()
        }),
      )
    })
  }

  return {
    FetchX509SVID: streaming('X509SVIDRequest', (s, selectors) => {
      s.hold(
        source.subscribeX509(selectors, (u) => {
          if (s.closed) return
          const bytes = encoded.get(u, encodeX509)
          // No identity (or the last one was removed): the client must stop using its SVIDs.
          if (bytes === undefined) return s.fail(PERMISSION_DENIED())
          s.send(bytes)
        }),
      )
    }),
    FetchX509Bundles: bundleStream('X509BundlesRequest', (u) =>
      workloadCodec.x509BundlesResponse.encode({
        crl: [],
        bundles: sortedRecord(
          [...u.x509].map(([td, certs]): [string, Uint8Array] => [tdKey(td), concat(certs)]),
        ),
      }),
    ),
    FetchJWTBundles: bundleStream('JWTBundlesRequest', (u) =>
      workloadCodec.jwtBundlesResponse.encode({
        bundles: sortedRecord(
          [...u.jwt].map(([td, jwks]): [string, Uint8Array] => [
            tdKey(td),
            new TextEncoder().encode(jwks),
          ]),
        ),
      }),
    ),
    FetchJWTSVID: unary(async (call, signal) => {
      const { audience, wanted } = parseJwt(call.request)
      const selectors = await attest(call, signal)
      let results: Awaited<ReturnType<WorkloadSource['fetchJwtSvids']>>
      try {
        results = await source.fetchJwtSvids(selectors, audience, wanted)
      } catch (err) {
        if (err instanceof WorkloadStatusError) throw err
        // The code tells the workload whose fault it is (the agent's server, most often).
        const code = err instanceof SpiffeEdgeError ? ` [${err.code}]` : ''
        throw new WorkloadStatusError(
          GrpcStatus.UNAVAILABLE,
          `could not fetch JWT-SVID${code}: ${(err as Error).message}`,
        )
      }
      if (wanted !== undefined) results = results.filter((r) => r.spiffeId === wanted)
      if (results.length === 0) throw PERMISSION_DENIED()
      const svids = dedupeHints(results)
      return lastJwtResponse.get(
        svids,
        () => {
          let key = ''
          for (const r of svids) {
            key += lengthKey(r.spiffeId) + lengthKey(r.token) + lengthKey(r.hint)
          }
          return jwtResponses.get(key, () =>
            workloadCodec.jwtSvidResponse.encode({
              svids: svids.map(
                (r): JwtSvidMsg => ({ spiffeId: r.spiffeId, svid: r.token, hint: r.hint }),
              ),
            }),
          )
        },
        (r) => [...r],
      )
    }),
    ValidateJWTSVID: unary(async (call) => {
      const req = workloadCodec.validateJwtSvidRequest.decode(call.request)
      if (req.audience === '') {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified')
      }
      if (req.svid === '') {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, 'svid must be specified')
      }
      let v: Awaited<ReturnType<typeof validateJwtSvid>>
      // jose loads with the first validation, not with the agent (cold start).
      const { validateJwtSvid: validate } = await import('../../spiffe/jwt-svid.js')
      try {
        v = await validate(req.svid, {
          audience: req.audience,
          bundles: (td) => source.jwtBundle(td),
          now: new Date(),
        })
      } catch (err) {
        throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, (err as Error).message)
      }
      let claims: Record<string, unknown> = { ...v.claims }
      // aud is always an array, as SPIRE returns it.
      if (typeof claims.aud === 'string') claims.aud = [claims.aud]
      if (!v.spiffeId.trustDomain.equals(opts.trustDomain)) {
        // Foreign tokens: only the claims the JWT-SVID spec defines (SPIRE's default filter).
        claims = { sub: claims.sub, aud: claims.aud, exp: claims.exp }
      }
      return workloadCodec.validateJwtSvidResponse.encode({
        spiffeId: v.spiffeId.toString(),
        claims,
      })
    }),
    FetchWITSVID: unimplemented('fetching WIT-SVIDs', statusOf),
    FetchWITBundles: unimplemented('fetching WIT bundles', statusOf),
  }
}

/** A streaming method we do not serve yet: the header rule still applies, then UNIMPLEMENTED. */
function unimplemented(what: string, statusOf: Middleware['statusOf']) {
  return (call: grpc.ServerWritableStream<Uint8Array, Uint8Array>) => {
    const s = new StreamState(call)
    try {
      checkHeader(call.metadata)
      s.fail(new WorkloadStatusError(GrpcStatus.UNIMPLEMENTED, `${what} is not implemented`))
    } catch (err) {
      s.fail(statusOf(err))
    }
  }
}
