/**
 * The Workload API messages this client speaks, embedded so the package reads no file at run
 * time (it is bundled into applications). The text is the subset of the spec's
 * proto/workload.proto the client uses; a unit test checks it against that file field by field.
 * protobufjs encodes and decodes; grpc-js moves raw bytes.
 */
import protobuf from 'protobufjs'
import { WorkloadProtocolError } from '../../../../src/agent/workload-api/errors.js'

export const WORKLOAD_PROTO_SUBSET = `
syntax = "proto3";
import "google/protobuf/struct.proto";
message X509SVIDRequest {}
message X509SVIDResponse {
  repeated X509SVID svids = 1;
  repeated bytes crl = 2;
  map<string, bytes> federated_bundles = 3;
}
message X509SVID {
  string spiffe_id = 1;
  bytes x509_svid = 2;
  bytes x509_svid_key = 3;
  bytes bundle = 4;
  string hint = 5;
}
message X509BundlesRequest {}
message X509BundlesResponse {
  repeated bytes crl = 1;
  map<string, bytes> bundles = 2;
}
message JWTSVIDRequest {
  repeated string audience = 1;
  string spiffe_id = 2;
}
message JWTSVIDResponse { repeated JWTSVID svids = 1; }
message JWTSVID {
  string spiffe_id = 1;
  string svid = 2;
  string hint = 3;
}
message JWTBundlesRequest {}
message JWTBundlesResponse { map<string, bytes> bundles = 1; }
message ValidateJWTSVIDRequest {
  string audience = 1;
  string svid = 2;
}
message ValidateJWTSVIDResponse {
  string spiffe_id = 1;
  google.protobuf.Struct claims = 2;
}
`

export interface X509SvidMsg {
  spiffeId: string
  x509Svid: Uint8Array
  x509SvidKey: Uint8Array
  bundle: Uint8Array
  hint: string
}
export interface X509SvidResponseMsg {
  svids: X509SvidMsg[]
  federatedBundles: Record<string, Uint8Array>
}
export interface X509BundlesResponseMsg {
  bundles: Record<string, Uint8Array>
}
export interface JwtSvidMsg {
  spiffeId: string
  svid: string
  hint: string
}
export interface JwtBundlesResponseMsg {
  bundles: Record<string, Uint8Array>
}
export interface ValidateJwtSvidResponseMsg {
  spiffeId: string
  claims: Record<string, unknown>
}

let root: protobuf.Root | undefined

export function workloadRoot(): protobuf.Root {
  if (root === undefined) {
    const r = new protobuf.Root()
    r.addJSON(protobuf.common.get('google/protobuf/struct.proto')!.nested!)
    protobuf.parse(WORKLOAD_PROTO_SUBSET, r, { keepCase: false })
    r.resolveAll()
    root = r
  }
  return root
}

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
}

function type(name: string): protobuf.Type {
  return workloadRoot().lookupType(name)
}

export function encode(name: string, value: object): Uint8Array {
  const t = type(name)
  return t.encode(t.fromObject(value)).finish()
}

export function decode<T>(name: string, bytes: Uint8Array): T {
  const t = type(name)
  try {
    return t.toObject(t.decode(bytes), TO_OBJECT) as T
  } catch (err) {
    throw new WorkloadProtocolError(`${name} does not decode: ${(err as Error).message}`)
  }
}

/** google.protobuf.Struct (as protobufjs objects) → plain JSON. */
export function structToJson(s: unknown): Record<string, unknown> {
  const fields = (s as { fields?: Record<string, unknown> } | undefined)?.fields ?? {}
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(fields)) out[k] = valueToJson(v, 0)
  return out
}

function valueToJson(v: unknown, depth: number): unknown {
  // Claims come from the agent; still, never recurse without bound on a peer's message.
  if (depth > 32) throw new WorkloadProtocolError('claims nested too deeply')
  const o = v as Record<string, unknown>
  if (o.nullValue !== undefined && o.nullValue !== null) return null
  if (typeof o.numberValue === 'number') return o.numberValue
  if (typeof o.stringValue === 'string') return o.stringValue
  if (typeof o.boolValue === 'boolean') return o.boolValue
  if (o.structValue !== undefined && o.structValue !== null) {
    const f = (o.structValue as { fields?: Record<string, unknown> }).fields ?? {}
    return Object.fromEntries(Object.entries(f).map(([k, x]) => [k, valueToJson(x, depth + 1)]))
  }
  if (o.listValue !== undefined && o.listValue !== null) {
    const vs = (o.listValue as { values?: unknown[] }).values ?? []
    return vs.map((x) => valueToJson(x, depth + 1))
  }
  return null
}
