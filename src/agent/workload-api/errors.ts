/**
 * Workload API errors. Server side, a WorkloadStatusError carries the gRPC status the SPIFFE spec
 * prescribes (InvalidArgument, PermissionDenied, Unavailable, ...); client side, a
 * WorkloadApiError carries the status the endpoint answered with, so callers can tell "retry with
 * backoff" (Unavailable, PermissionDenied) from "report and stop" (InvalidArgument).
 */
import { status as GrpcStatus } from '@grpc/grpc-js'
import { SpiffeEdgeError } from '../../errors.js'

export { GrpcStatus }

const STATUS_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(GrpcStatus)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
)

export function statusName(code: number): string {
  return STATUS_NAMES[code] ?? `STATUS_${code}`
}

/** A message that does not decode as the Workload API message it should be. */
export class WorkloadProtocolError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_WORKLOAD_PROTOCOL', message, {
      remedy:
        'the peer speaks another version of the SPIFFE Workload API or sent a corrupt message',
    })
  }
}

/** What a Workload API handler answers with: a gRPC status and its details text. */
export class WorkloadStatusError extends SpiffeEdgeError {
  readonly status: number

  constructor(status: number, message: string, remedy?: string) {
    super('ERR_WORKLOAD_API', message, remedy === undefined ? {} : { remedy })
    this.status = status
  }
}

const CLIENT_REMEDY: Readonly<Record<number, string>> = {
  [GrpcStatus.INVALID_ARGUMENT]: 'the request is malformed; check the arguments (do not retry)',
  [GrpcStatus.PERMISSION_DENIED]:
    'no registration entry matches this workload yet; check its selectors, or retry later',
  [GrpcStatus.UNAVAILABLE]:
    'is the agent running and is the socket path right? Retry with backoff if it is starting',
  [GrpcStatus.UNAUTHENTICATED]: 'the caller could not be verified; retry the call',
  [GrpcStatus.UNIMPLEMENTED]: 'this agent does not implement that part of the Workload API',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'the agent did not answer in time; is it running?',
}

/** A Workload API call that ended with a non-OK gRPC status (client side). */
export class WorkloadApiError extends SpiffeEdgeError {
  readonly status: number

  constructor(status: number, details: string, cause?: unknown) {
    // The agent answered, but could not reach (or trust) its server: not "is the agent running?".
    const serverSide = status === GrpcStatus.UNAVAILABLE && /\[ERR_SERVER_[A-Z_]+\]/.test(details)
    super(
      serverSide ? 'ERR_AGENT_SERVER_UNREACHABLE' : 'ERR_WORKLOAD_API',
      `${statusName(status)}: ${details}`,
      {
        remedy: serverSide
          ? 'the agent is running but cannot get this from its server: check that the server is up and reachable from the agent (see the agent log)'
          : (CLIENT_REMEDY[status] ?? 'check the agent logs'),
        cause,
      },
    )
    this.status = status
  }
}

/** A bad endpoint address, or a socket that cannot be served (in use, unwritable directory). */
export class WorkloadEndpointError extends SpiffeEdgeError {
  constructor(message: string, remedy: string, cause?: unknown) {
    super('ERR_WORKLOAD_ENDPOINT', message, { remedy, cause })
  }
}

/** A workload attestor could not attest a caller (as opposed to "not applicable": []). */
export class WorkloadAttestationError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_WORKLOAD_ATTESTATION', message, {
      remedy: 'check that /proc is mounted and readable by the agent',
      cause,
    })
  }
}
