/**
 * Minimal gRPC server reflection (grpc.reflection.v1alpha), which the Workload Endpoint spec says
 * SHOULD be offered: list_services, file_by_filename and file_containing_symbol, answered from
 * FileDescriptorProtos that protobufjs derives from the same .proto text we serve. Extensions are
 * not used by these protos, so extension queries answer NOT_FOUND.
 */
import type * as grpc from '@grpc/grpc-js'
import protobuf from 'protobufjs'
import descriptor from 'protobufjs/ext/descriptor/index.js'
import { GrpcStatus } from './errors.js'
import { HEALTH_PROTO_TEXT, REFLECTION_PROTO_TEXT, WORKLOAD_PROTO, workloadCodec } from './proto.js'

interface FileDesc {
  name?: string
  package?: string
  dependency?: string[]
  messageType?: { name: string }[]
  enumType?: { name: string }[]
  service?: { name: string; method?: { name: string }[] }[]
}

interface Files {
  /** Encoded FileDescriptorProto by file name. */
  readonly bytes: Map<string, Uint8Array>
  readonly deps: Map<string, string[]>
  /** Fully-qualified symbol (no leading dot) → file name. */
  readonly symbols: Map<string, string>
}

let files: Files | undefined

/** protobufjs names files after packages (root.proto, google_protobuf.proto): use real paths. */
const RENAME: Readonly<Record<string, string>> = {
  'root.proto': 'workload.proto',
  'google_protobuf.proto': 'google/protobuf/struct.proto',
  'grpc_health_v1.proto': 'grpc/health/v1/health.proto',
  'grpc_reflection_v1alpha.proto': 'grpc/reflection/v1alpha/reflection.proto',
}

function load(): Files {
  if (files) return files
  const out: Files = { bytes: new Map(), deps: new Map(), symbols: new Map() }
  const roots = [
    new protobuf.Root().loadSync(WORKLOAD_PROTO, { keepCase: true }),
    protobuf.parse(HEALTH_PROTO_TEXT, new protobuf.Root(), { keepCase: true }).root,
    protobuf.parse(REFLECTION_PROTO_TEXT, new protobuf.Root(), { keepCase: true }).root,
  ]
  for (const root of roots) {
    const set = (root as unknown as { toDescriptor(s: string): protobuf.Message }).toDescriptor(
      'proto3',
    )
    const obj = descriptor.FileDescriptorSet.toObject(set) as { file?: FileDesc[] }
    for (const f of obj.file ?? []) {
      const name = RENAME[f.name ?? ''] ?? f.name ?? 'unknown.proto'
      f.name = name
      if (name === 'workload.proto') f.dependency = ['google/protobuf/struct.proto']
      const pkg = f.package ? `${f.package}.` : ''
      for (const m of f.messageType ?? []) out.symbols.set(`${pkg}${m.name}`, name)
      for (const e of f.enumType ?? []) out.symbols.set(`${pkg}${e.name}`, name)
      for (const s of f.service ?? []) {
        out.symbols.set(`${pkg}${s.name}`, name)
        for (const m of s.method ?? []) out.symbols.set(`${pkg}${s.name}.${m.name}`, name)
      }
      out.deps.set(name, f.dependency ?? [])
      const msg = descriptor.FileDescriptorProto.fromObject(f)
      out.bytes.set(name, descriptor.FileDescriptorProto.encode(msg).finish())
    }
  }
  files = out
  return out
}

/** The file and, after it, every file it imports (transitively). */
function withDeps(f: Files, name: string): Uint8Array[] {
  const seen = new Set<string>()
  const order: string[] = []
  const visit = (n: string) => {
    if (seen.has(n)) return
    seen.add(n)
    order.push(n)
    for (const d of f.deps.get(n) ?? []) visit(d)
  }
  visit(name)
  return order.flatMap((n) => {
    const b = f.bytes.get(n)
    return b ? [b] : []
  })
}

function answer(
  services: readonly string[],
  req: Record<string, unknown>,
): Record<string, unknown> {
  const base = { validHost: typeof req.host === 'string' ? req.host : '', originalRequest: req }
  const notFound = (what: string) => ({
    ...base,
    errorResponse: { errorCode: GrpcStatus.NOT_FOUND, errorMessage: `${what} not found` },
  })
  if (typeof req.listServices === 'string') {
    return { ...base, listServicesResponse: { service: services.map((name) => ({ name })) } }
  }
  const f = load()
  if (typeof req.fileByFilename === 'string') {
    if (!f.bytes.has(req.fileByFilename)) return notFound(`file ${req.fileByFilename}`)
    return {
      ...base,
      fileDescriptorResponse: { fileDescriptorProto: withDeps(f, req.fileByFilename) },
    }
  }
  if (typeof req.fileContainingSymbol === 'string') {
    const sym = req.fileContainingSymbol.replace(/^\./, '')
    const file = f.symbols.get(sym)
    if (file === undefined) return notFound(`symbol ${sym}`)
    return { ...base, fileDescriptorResponse: { fileDescriptorProto: withDeps(f, file) } }
  }
  return notFound('extension')
}

/** The ServerReflectionInfo bidi handler, listing `services`. */
export function reflectionHandler(services: readonly string[]) {
  return (call: grpc.ServerDuplexStream<Uint8Array, Uint8Array>) => {
    call.on('data', (b: Uint8Array) => {
      let res: Record<string, unknown>
      try {
        res = answer(services, workloadCodec.reflectionRequest.decode(b))
      } catch (err) {
        res = {
          errorResponse: {
            errorCode: GrpcStatus.INVALID_ARGUMENT,
            errorMessage: (err as Error).message,
          },
        }
      }
      call.write(Buffer.from(workloadCodec.reflectionResponse.encode(res)))
    })
    call.on('end', () => call.end())
    call.on('error', () => undefined)
  }
}
