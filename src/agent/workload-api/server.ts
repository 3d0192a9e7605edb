/**
 * The SPIFFE Workload API endpoint: gRPC on a Unix socket, serving each caller the identities its
 * attested selectors entitle it to. This file is the public entry and the wiring, including the
 * health state (serving until closed, and the agent's own readiness) that the side services
 * report. The parts live next to it:
 *
 *   endpoint.ts     socket, SO_PEERCRED, connection injection into grpc-js, stream-reset budget
 *   middleware.ts   security header, caller attestation, liveness re-check, call scaffolding
 *   handlers.ts     the Workload API methods, from the WorkloadSource only
 *   stream-state.ts per-stream cancellation, subscriptions, backpressure
 *   side-services.ts health and reflection
 */
import * as grpc from '@grpc/grpc-js'
import { type Log, silentLog } from '../../common/log.js'
import { loadPeerCred } from '../../native/peercred.js'
import type { TrustDomain } from '../../spiffe/id.js'
import { ConnTable, listenEndpoint, prepareSocketPath } from './endpoint.js'
import { workloadHandlers } from './handlers.js'
import { middleware } from './middleware.js'
import { DEFAULT_PROC_ROOT } from './proc.js'
import type { SdsNames } from './sds.js'
import { SECURITY_HEADER, workloadServiceDefinition } from './service.js'
import type { SideServices } from './side-services.js'
import type { PeerInfo, WorkloadAttestor, WorkloadSource } from './types.js'

export { RESET_BUDGET } from './endpoint.js'
export { SECURITY_HEADER }

export interface WorkloadApiServerOptions {
  readonly socketPath: string
  readonly source: WorkloadSource
  readonly attestors: readonly WorkloadAttestor[]
  readonly trustDomain: TrustDomain
  /** Default 0o777: any local user may ask; attestation decides what they get (like SPIRE). */
  readonly socketMode?: number
  readonly log?: Log
  /** Kernel credentials of a connected socket; default: the peercred addon's SO_PEERCRED. */
  readonly peerCred?: (fd: number) => PeerInfo
  /** Where /proc is (tests); default '/proc'. */
  readonly procRoot?: string
  /** Per-call attestation deadline, ms; default 10000. */
  readonly attestTimeoutMs?: number
  /** Serve bundles to callers without an identity (SPIRE's allow_unauthenticated_verifiers). */
  readonly allowUnauthenticatedVerifiers?: boolean
  /** Most concurrent streams per connection; default 1000. */
  readonly maxConcurrentStreams?: number
  /** Envoy SDS resource names ([agent.sds]); default SPIRE's: default, ROOTCA, ALL. */
  readonly sds?: SdsNames
  /** Whether the agent itself is healthy (a valid agent SVID); default: always. */
  readonly ready?: () => boolean
  /** Wraps the method handlers (the agent's metrics count and time each call there). */
  readonly wrapHandlers?: (
    h: grpc.UntypedServiceImplementation,
  ) => grpc.UntypedServiceImplementation
}

export interface WorkloadApiServer extends AsyncDisposable {
  readonly socketPath: string
  /** Open client connections. */
  readonly connections: number
  close(): Promise<void>
}

export async function startWorkloadApi(opts: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
  const log = opts.log ?? silentLog
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  // Resolved now, so a missing addon fails the start, not every caller.
  const peerCred = opts.peerCred ?? loadPeerCred().peerCred
  const conns = new ConnTable(log)
  let serving = true

  const mw = middleware({
    conns,
    attestors: opts.attestors,
    procRoot,
    attestTimeoutMs: opts.attestTimeoutMs ?? 10_000,
    log,
  })
  const grpcServer = new grpc.Server({
    // Requests are tiny (the largest is a JWT to validate); bound what a caller can make us buffer.
    'grpc.max_receive_message_length': 1 << 20,
    'grpc.max_concurrent_streams': opts.maxConcurrentStreams ?? 1000,
    // Nothing reads channelz here; its per-call and per-session trackers are work on every call.
    'grpc.enable_channelz': 0,
  })
  const handlers = workloadHandlers({ ...opts, log }, mw)
  grpcServer.addService(workloadServiceDefinition, opts.wrapHandlers?.(handlers) ?? handlers)
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure())
  conns.watchSessions(grpcServer)

  await prepareSocketPath(opts.socketPath)
  const endpoint = await listenEndpoint(
    {
      socketPath: opts.socketPath,
      socketMode: opts.socketMode ?? 0o777,
      conns,
      peerCred,
      procRoot,
      log,
    },
    injector,
  )
  log('info', 'Workload API listening', { socket: opts.socketPath })
  // SDS, health and reflection are added once the Workload API listens: their modules and protos
  // (proto-loader, protobufjs, the reflection and Envoy types) are most of this endpoint's load
  // time, and a workload restarting beside a rebooted agent asks for its SVID first. grpc-js
  // looks handlers up per call, so adding them now is safe; until then (a few hundred ms on a
  // cold start) they answer UNIMPLEMENTED. This function returns only once they are in.
  let side: SideServices
  try {
    const [sds, sideServices] = await Promise.all([
      import('./sds.js'),
      import('./side-services.js'),
    ])
    grpcServer.addService(
      sds.sdsServiceDefinition,
      sds.sdsHandlers({ ...opts, names: opts.sds, log, noteReset: (p) => conns.noteReset(p) }, mw),
    )
    // The endpoint answers from the local cache only, so "up" is what SERVING can mean here.
    side = sideServices.addSideServices(grpcServer, () => serving && (opts.ready?.() ?? true))
  } catch (err) {
    await endpoint.stopListening()
    injector.destroy()
    grpcServer.forceShutdown()
    endpoint.removeSocket()
    throw err
  }

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      serving = false
      side.stop()
      await endpoint.stopListening()
      injector.destroy()
      grpcServer.forceShutdown()
      endpoint.removeSocket()
      log('info', 'Workload API closed', { socket: opts.socketPath })
    })()
    return closing
  }
  return {
    socketPath: opts.socketPath,
    get connections() {
      return endpoint.connections
    },
    close,
    [Symbol.asyncDispose]: close,
  }
}
