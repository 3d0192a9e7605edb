/**
 * The library's errors. All extend SpiffeEdgeError ({code, remedy}), so callers branch on `code`:
 * ERR_SOURCE_CLOSED, ERR_SOURCE_TIMEOUT, ERR_SOURCE_NO_SVID, ERR_PEER_UNAUTHORIZED here, plus the
 * core's ERR_SPIFFE_ID_INVALID / ERR_SVID_INVALID / ERR_BUNDLE_INVALID and the Workload API's
 * ERR_WORKLOAD_API (with the gRPC `status`), ERR_WORKLOAD_PROTOCOL and ERR_WORKLOAD_ENDPOINT.
 */
import { SpiffeEdgeError } from '../../../src/errors.js'

export type { ErrorCode } from '../../../src/errors.js'
export { SpiffeEdgeError }

/** The source was closed: it holds nothing any more and will not reconnect. */
export class SourceClosedError extends SpiffeEdgeError {
  constructor(what: string) {
    super('ERR_SOURCE_CLOSED', `the ${what} is closed`, {
      remedy: 'create a new source; a closed one is never reopened',
    })
  }
}

/** ready() timed out before the first complete update arrived. */
export class SourceTimeoutError extends SpiffeEdgeError {
  constructor(what: string, ms: number, last: unknown) {
    super(
      'ERR_SOURCE_TIMEOUT',
      `the ${what} got no update within ${ms} ms${last instanceof Error ? ` (last error: ${last.message})` : ''}`,
      {
        remedy:
          'check that the agent runs, that SPIFFE_ENDPOINT_SOCKET (or the address) names its socket, and that an entry matches this workload',
        cause: last,
      },
    )
  }
}

/** No SVID the picker or hint accepts (or none at all yet). */
export class NoSvidError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_SOURCE_NO_SVID', message, {
      remedy:
        'await source.ready() first; check the hint or picker against the SVIDs the agent serves (registration entries)',
    })
  }
}

/** A TLS or gRPC peer that failed SPIFFE verification or that the authorizer refused. */
export class PeerUnauthorizedError extends SpiffeEdgeError {
  readonly peerId: string | undefined

  constructor(message: string, peerId?: string, cause?: unknown) {
    super('ERR_PEER_UNAUTHORIZED', message, {
      remedy:
        'check the peer SVID against the bundle of its trust domain and the authorizer (authorizeID, authorizeMemberOf, ...)',
      cause,
    })
    this.peerId = peerId
  }
}
