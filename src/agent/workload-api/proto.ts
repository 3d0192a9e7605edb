/**
 * The SPIFFE Workload API messages (proto/workload.proto), loaded once with protobufjs, plus the
 * health check the client makes (grpc.health.v1). Messages go
 * over the wire as raw bytes (see service.ts) and are (de)coded here, so a malformed request is a
 * coded error the handler maps to INVALID_ARGUMENT instead of a transport failure.
 */
import { createRequire } from 'node:module'
import { join } from 'node:path'
import type { JsonObject } from '@bufbuild/protobuf'
import protobuf from 'protobufjs'
import { packageRoot } from '../../common/package-root.js'
import { WorkloadProtocolError } from './errors.js'
import type * as gen from './gen/workload.js'

export const WORKLOAD_PROTO = join(packageRoot(), 'proto', 'workload.proto')

// Message shapes generated from workload.proto (scripts/gen-proto-types.mjs), under the names
// the Workload API code uses. Claims are plain JSON on our side; the codec converts them to and
// from google.protobuf.Struct (with @bufbuild/protobuf's JSON mapping, below).
export type X509SvidMsg = gen.X509SVID
export type X509SvidResponseMsg = gen.X509SVIDResponse
export type X509BundlesResponseMsg = gen.X509BundlesResponse
export type JwtSvidRequestMsg = gen.JWTSVIDRequest
export type JwtSvidMsg = gen.JWTSVID
export type JwtSvidResponseMsg = gen.JWTSVIDResponse
export type JwtBundlesResponseMsg = gen.JWTBundlesResponse
export type ValidateJwtSvidRequestMsg = gen.ValidateJWTSVIDRequest
export type ValidateJwtSvidResponseMsg = Omit<gen.ValidateJWTSVIDResponse, 'claims'> & {
  claims: Record<string, unknown>
}

/** grpc.health.v1, for the client's health check (the server side is grpc-health-check). */
export const HEALTH_PROTO_TEXT = `
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
`

let workloadRoot: protobuf.Root | undefined
let sideRoot: protobuf.Root | undefined

export function workloadProtoRoot(): protobuf.Root {
  workloadRoot ??= protobuf.loadSync(WORKLOAD_PROTO)
  return workloadRoot
}

function sideType(name: string): protobuf.Type {
  if (!sideRoot) {
    sideRoot = new protobuf.Root()
    protobuf.parse(HEALTH_PROTO_TEXT, sideRoot, { keepCase: false })
  }
  return sideRoot.lookupType(name)
}

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: Number,
  enums: Number,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: false,
}

function encodeWith(t: protobuf.Type, value: object): Uint8Array {
  const err = t.verify(value)
  if (err) throw new WorkloadProtocolError(`${t.name}: ${err}`)
  return t.encode(t.fromObject(value)).finish()
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true })

/**
 * Proto3 strings must be UTF-8, but protobufjs decodes bad bytes into U+FFFD silently: two
 * different byte strings would then name the same audience. So the raw wire is walked first and
 * every string field (in nested messages too) must be valid UTF-8.
 */
function checkUtf8(t: protobuf.Type, bytes: Uint8Array, depth = 0): void {
  if (depth > 8) throw new Error('messages nested too deeply')
  const r = protobuf.Reader.create(bytes)
  while (r.pos < r.len) {
    const tag = r.uint32()
    const wire = tag & 7
    const field = t.fieldsById[tag >>> 3]
    if (wire !== 2 || !field) {
      r.skipType(wire)
      continue
    }
    const value = r.bytes()
    if (field.type === 'string') {
      try {
        STRICT_UTF8.decode(value)
      } catch {
        throw new Error(`field ${field.name} is not valid UTF-8`)
      }
    } else if (field.resolve().resolvedType instanceof protobuf.Type) {
      checkUtf8(field.resolvedType as protobuf.Type, value, depth + 1)
    }
  }
}

function decodeWith<T>(t: protobuf.Type, bytes: Uint8Array, defaults = true, strict = false): T {
  try {
    if (strict) checkUtf8(t, bytes)
    return t.toObject(t.decode(bytes), { ...TO_OBJECT, defaults }) as T
  } catch (err) {
    throw new WorkloadProtocolError(`${t.name} does not decode: ${(err as Error).message}`)
  }
}

/** Requests from callers: strict UTF-8 (responses we decode as a client stay lenient). */
function decodeRequest<T>(t: protobuf.Type, bytes: Uint8Array, defaults = true): T {
  return decodeWith<T>(t, bytes, defaults, true)
}

/** Types by name, looked up once: lookupType walks the namespace tree on every call. */
const types = new Map<string, protobuf.Type>()
const wl = (name: string): protobuf.Type => {
  let t = types.get(name)
  if (!t) {
    t = workloadProtoRoot().lookupType(name)
    types.set(name, t)
  }
  return t
}

/** The empty requests decode to this (zero bytes: every field absent, nothing to check). */
const EMPTY: Readonly<object> = Object.freeze({})

const structType = () => workloadProtoRoot().lookupType('google.protobuf.Struct')

type Bufbuild = typeof import('@bufbuild/protobuf') & typeof import('@bufbuild/protobuf/wkt')
let bufbuild: Bufbuild | undefined
/**
 * @bufbuild/protobuf is loaded on the first Struct conversion (ValidateJWTSVID only): loaded at
 * start it was ~60 modules and several MiB of the agent's resident memory that FetchX509SVID and
 * FetchJWTSVID never use. Synchronous (its CommonJS build) because the codec is.
 */
function structRuntime(): Bufbuild {
  if (!bufbuild) {
    const req = createRequire(import.meta.url)
    bufbuild = { ...req('@bufbuild/protobuf'), ...req('@bufbuild/protobuf/wkt') } as Bufbuild
  }
  return bufbuild
}

/**
 * Claims ↔ google.protobuf.Struct. protobufjs has no JSON mapping for Struct, so
 * @bufbuild/protobuf's well-known-type mapping does it (it refuses what JSON cannot hold, such as
 * NaN); the Struct crosses between the two runtimes as its wire bytes.
 */
function claimsToStruct(claims: Record<string, unknown>): protobuf.Message {
  const { toBinary, fromJson, StructSchema } = structRuntime()
  let bytes: Uint8Array
  try {
    bytes = toBinary(StructSchema, fromJson(StructSchema, claims as JsonObject))
  } catch (err) {
    throw new WorkloadProtocolError(`claims are not JSON: ${(err as Error).message}`)
  }
  return structType().decode(bytes)
}

function structToClaims(s: protobuf.Message | null | undefined): Record<string, unknown> {
  if (!s) return {}
  const bytes = structType().encode(s).finish()
  const { toJson, fromBinary, StructSchema } = structRuntime()
  try {
    return toJson(StructSchema, fromBinary(StructSchema, bytes)) as Record<string, unknown>
  } catch (err) {
    throw new WorkloadProtocolError(`claims do not decode: ${(err as Error).message}`)
  }
}

export const workloadCodec = {
  x509SvidResponse: {
    encode: (m: X509SvidResponseMsg) => encodeWith(wl('X509SVIDResponse'), m),
    decode: (b: Uint8Array) => decodeWith<X509SvidResponseMsg>(wl('X509SVIDResponse'), b),
  },
  x509BundlesResponse: {
    encode: (m: X509BundlesResponseMsg) => encodeWith(wl('X509BundlesResponse'), m),
    decode: (b: Uint8Array) => decodeWith<X509BundlesResponseMsg>(wl('X509BundlesResponse'), b),
  },
  jwtSvidRequest: {
    encode: (m: JwtSvidRequestMsg) => encodeWith(wl('JWTSVIDRequest'), m),
    decode: (b: Uint8Array) => decodeRequest<JwtSvidRequestMsg>(wl('JWTSVIDRequest'), b),
  },
  jwtSvidResponse: {
    encode: (m: JwtSvidResponseMsg) => encodeWith(wl('JWTSVIDResponse'), m),
    decode: (b: Uint8Array) => decodeWith<JwtSvidResponseMsg>(wl('JWTSVIDResponse'), b),
  },
  jwtBundlesResponse: {
    encode: (m: JwtBundlesResponseMsg) => encodeWith(wl('JWTBundlesResponse'), m),
    decode: (b: Uint8Array) => decodeWith<JwtBundlesResponseMsg>(wl('JWTBundlesResponse'), b),
  },
  validateJwtSvidRequest: {
    encode: (m: ValidateJwtSvidRequestMsg) => encodeWith(wl('ValidateJWTSVIDRequest'), m),
    decode: (b: Uint8Array) =>
      decodeRequest<ValidateJwtSvidRequestMsg>(wl('ValidateJWTSVIDRequest'), b),
  },
  validateJwtSvidResponse: {
    encode: (m: ValidateJwtSvidResponseMsg) =>
      encodeWith(wl('ValidateJWTSVIDResponse'), {
        spiffeId: m.spiffeId,
        claims: claimsToStruct(m.claims),
      }),
    decode: (b: Uint8Array): ValidateJwtSvidResponseMsg => {
      const t = wl('ValidateJWTSVIDResponse')
      let raw: protobuf.Message & { spiffeId?: string; claims?: protobuf.Message | null }
      try {
        raw = t.decode(b)
      } catch (err) {
        throw new WorkloadProtocolError(`${t.name} does not decode: ${(err as Error).message}`)
      }
      return { spiffeId: raw.spiffeId ?? '', claims: structToClaims(raw.claims) }
    },
  },
  /** The empty requests (X509SVIDRequest, bundles): any bytes that parse as the message. */
  empty: {
    // Zero bytes is what every client sends: nothing to walk or convert (the profile showed the
    // generic decode per FetchX509SVID). Anything else still goes through the strict decode.
    decode: (name: string, b: Uint8Array): object => {
      const t = wl(name) // an unknown name still fails, whatever the bytes
      return b.byteLength === 0 ? EMPTY : decodeRequest<object>(t, b)
    },
  },
  healthRequest: {
    encode: (m: { service: string }) =>
      encodeWith(sideType('grpc.health.v1.HealthCheckRequest'), m),
    decode: (b: Uint8Array) =>
      decodeRequest<{ service: string }>(sideType('grpc.health.v1.HealthCheckRequest'), b),
  },
  healthResponse: {
    encode: (m: { status: number }) =>
      encodeWith(sideType('grpc.health.v1.HealthCheckResponse'), m),
    decode: (b: Uint8Array) =>
      decodeWith<{ status: number }>(sideType('grpc.health.v1.HealthCheckResponse'), b),
  },
}

export const HEALTH_SERVING = 1
export const HEALTH_NOT_SERVING = 2
