/**
 * The two standard services served beside the Workload API, from their maintained packages:
 * grpc.health.v1 (grpc-health-check) and server reflection v1 and v1alpha (@grpc/reflection).
 * Only the Workload API itself keeps its raw-bytes handlers (service.ts): there a malformed
 * request must become InvalidArgument, which generated handlers cannot map.
 *
 * Both are registered at start under their fixed method paths but load on their first call
 * (lazy.ts): the packages, proto-loader and the parsed descriptors are ~5 MiB of the agent's
 * RSS (bench/agent-modules.ts), and most agents are never asked for health over gRPC or
 * reflection.
 */
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type * as grpc from '@grpc/grpc-js'
import type { PackageDefinition } from '@grpc/proto-loader'
import type { ReflectionService } from '@grpc/reflection'
import type { HealthImplementation, ServingStatus } from 'grpc-health-check'
import { addLazyService } from './lazy-service.js'
import { WORKLOAD_PROTO } from './proto.js'
import { WORKLOAD_SERVICE } from './service.js'

// CommonJS packages, required synchronously on first use (grpc-js deserializes synchronously).
const require = createRequire(import.meta.url)
type ProtoLoader = typeof import('@grpc/proto-loader')
type Reflection = typeof import('@grpc/reflection')
type Health = typeof import('grpc-health-check')
type Descriptor = typeof import('protobufjs/ext/descriptor/index.js')

/** The services health answers for: the server as a whole ('') and the Workload API. */
const HEALTH_NAMES = ['', WORKLOAD_SERVICE] as const

/** Method names and streaming (request, response), as the packages' protos define them. */
const HEALTH_METHODS = { Check: [false, false], Watch: [false, true] } as const
const REFLECTION_METHODS = { ServerReflectionInfo: [true, true] } as const

/**
 * Check reads the library's status map: make each read re-check readiness first, so Check is
 * exact; Watch streams are fed by setStatus from the timer. (If the library's internals change,
 * Check is as fresh as the timer.)
 */
function liveStatus(health: HealthImplementation, refresh: () => void): void {
  const internals = health as unknown as { statusMap?: unknown }
  if (internals.statusMap instanceof Map) {
    const live = new (class extends Map<string, ServingStatus> {
      override get(k: string) {
        refresh()
        return super.get(k)
      }
    })(internals.statusMap as Map<string, ServingStatus>)
    internals.statusMap = live
  }
}

function reflectionProtos(): string[] {
  // The package ships its protos beside its build; resolve them from its entry point.
  const entry = require.resolve('@grpc/reflection')
  const protoRoot = join(dirname(entry), '..', 'proto', 'grpc', 'reflection')
  return [join(protoRoot, 'v1', 'reflection.proto'), join(protoRoot, 'v1alpha', 'reflection.proto')]
}

/**
 * @grpc/reflection 1.0 indexes symbols of package-less files (workload.proto: the spec fixes the
 * service as plain `SpiffeWorkloadAPI`) under a leading dot: it lists `.SpiffeWorkloadAPI` and
 * cannot find `SpiffeWorkloadAPI`, which grpcurl asks for. Add the undotted names, as other gRPC
 * servers report them. Reads the implementations' private tables; skipped if their shape changes.
 */
function packageLessNames(reflection: ReflectionService): void {
  const impls = reflection as unknown as Record<string, unknown>
  for (const key of ['v1', 'v1Alpha']) {
    const impl = impls[key] as { symbols?: unknown; services?: unknown } | undefined
    for (const table of [impl?.symbols, impl?.services]) {
      if (typeof table !== 'object' || table === null) continue
      const t = table as Record<string, unknown>
      for (const name of Object.keys(t)) {
        if (!name.startsWith('.')) continue
        t[name.slice(1)] ??= t[name]
        if (table === impl?.services) delete t[name]
      }
    }
  }
}

/**
 * proto-loader names each descriptor after its package ("root.proto", "google_protobuf.proto"),
 * not after the file it came from. Reflection clients ask by file name and resolve imports by it,
 * so rename them to the real paths (the packages here come one file each).
 */
const FILE_OF_PACKAGE: Readonly<Record<string, string>> = {
  'root.proto': 'workload.proto',
  'google_protobuf.proto': 'google/protobuf/struct.proto',
  'grpc_health_v1.proto': 'grpc/health/v1/health.proto',
  'grpc_reflection_v1.proto': 'grpc/reflection/v1/reflection.proto',
  'grpc_reflection_v1alpha.proto': 'grpc/reflection/v1alpha/reflection.proto',
}

function realFileNames(pkg: PackageDefinition): void {
  const descriptor = require('protobufjs/ext/descriptor/index.js') as Descriptor
  const done = new Map<Buffer, Buffer>()
  const rename = (b: Buffer): Buffer => {
    let out = done.get(b)
    if (out) return out
    const fd = descriptor.FileDescriptorProto.decode(b) as unknown as {
      name?: string
      dependency?: string[]
    }
    const name = fd.name ?? ''
    fd.name = FILE_OF_PACKAGE[name] ?? name
    fd.dependency = (fd.dependency ?? []).map((d) => FILE_OF_PACKAGE[d] ?? d)
    out = Buffer.from(descriptor.FileDescriptorProto.encode(fd as object).finish())
    done.set(b, out)
    return out
  }
  const fix = (holder: { fileDescriptorProtos?: Buffer[] } | undefined) => {
    if (holder?.fileDescriptorProtos) {
      holder.fileDescriptorProtos = holder.fileDescriptorProtos.map(rename)
    }
  }
  for (const def of Object.values(pkg)) {
    const d = def as Record<string, unknown> & { fileDescriptorProtos?: Buffer[] }
    if (d.fileDescriptorProtos) {
      fix(d)
      continue
    }
    for (const m of Object.values(d)) {
      const method = m as { requestType?: { fileDescriptorProtos?: Buffer[] } } & {
        responseType?: { fileDescriptorProtos?: Buffer[] }
      }
      fix(method.requestType)
      fix(method.responseType)
    }
  }
}

export interface SideServices {
  /** Re-reads readiness now (also done on a timer, so Watch streams see changes). */
  refresh(): void
  /** NOT_SERVING from now on (shutdown). */
  stop(): void
}

/**
 * Adds health and reflection to `server`. `healthy()` is polled every `pollMs` (and at stop), so
 * Check and Watch follow the agent's readiness without the manager knowing about gRPC.
 */
export function addSideServices(
  server: grpc.Server,
  healthy: () => boolean,
  pollMs = 1000,
): SideServices {
  let stopped = false
  const status = (): ServingStatus => (!stopped && healthy() ? 'SERVING' : 'NOT_SERVING')
  let last = status()
  let health: HealthImplementation | undefined
  const refresh = () => {
    const now = status()
    if (now === last) return
    last = now
    for (const n of HEALTH_NAMES) health?.setStatus(n, now)
  }
  addLazyService(server, 'grpc.health.v1.Health', HEALTH_METHODS, (capture) => {
    const { HealthImplementation } = require('grpc-health-check') as Health
    refresh()
    health = new HealthImplementation(Object.fromEntries(HEALTH_NAMES.map((n) => [n, last])))
    liveStatus(health, refresh)
    health.addToServer(capture)
  })
  // Both reflection versions come from one ReflectionService over one parsed package.
  let reflection: ReflectionService | undefined
  const loadReflection = (capture: grpc.Server) => {
    if (!reflection) {
      const { loadSync } = require('@grpc/proto-loader') as ProtoLoader
      const { ReflectionService } = require('@grpc/reflection') as Reflection
      const { protoPath: healthProtoPath } = require('grpc-health-check') as Health
      const pkg = loadSync([WORKLOAD_PROTO, healthProtoPath, ...reflectionProtos()], {
        keepCase: true, // descriptors carry the .proto's own field names
        includeDirs: [dirname(WORKLOAD_PROTO)],
      })
      realFileNames(pkg)
      reflection = new ReflectionService(pkg)
      packageLessNames(reflection)
    }
    reflection.addToServer(capture)
  }
  for (const v of ['v1', 'v1alpha'])
    addLazyService(
      server,
      `grpc.reflection.${v}.ServerReflection`,
      REFLECTION_METHODS,
      loadReflection,
    )
  const timer = setInterval(refresh, pollMs)
  timer.unref()
  return {
    refresh,
    stop() {
      stopped = true
      clearInterval(timer)
      refresh()
    },
  }
}
