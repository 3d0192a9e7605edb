/**
 * The node API's protobuf messages (proto/spiffe_edge/node/v1/node.proto), loaded once with
 * protobufjs. Field names are camelCase in TypeScript; int64s become numbers (unix seconds and
 * revisions stay far below 2^53).
 */
import { join } from 'node:path'
import protobuf from 'protobufjs'
import { packageRoot } from '../common/package-root.js'
import { SpiffeEdgeError } from '../errors.js'

export const NODE_PROTO = join(packageRoot(), 'proto', 'spiffe_edge', 'node', 'v1', 'node.proto')
export const NODE_PACKAGE = 'spiffe_edge.node.v1'

import type * as gen from './gen/node.js'

// The message shapes come from node.proto (scripts/gen-proto-types.mjs); these are the names the
// rest of the code uses for them.
export type Selector = gen.Selector
export type X509SvidMessage = gen.X509SVID
export type AttestAgentRequest = gen.AttestAgentRequest
export type AttestAgentResponse = gen.AttestAgentResponse
export type SignedRequest = gen.SignedRequest
export type SignedResponse = gen.SignedResponse
export type EntryMessage = gen.Entry
export type MqttAttestRequest = gen.MqttAttestRequest
export type MqttAttestResponse = gen.MqttAttestResponse
export type BundlePush = gen.BundlePush

/** Request and response bodies of the signed `Call` methods, by method name. */
export interface CallMethods {
  RenewAgent: { request: gen.RenewAgentRequest; response: gen.RenewAgentResponse }
  SyncEntries: { request: gen.SyncEntriesRequest; response: gen.SyncEntriesResponse }
  BatchNewX509SVID: { request: gen.BatchNewX509SVIDRequest; response: gen.BatchNewX509SVIDResponse }
  NewJWTSVID: { request: gen.NewJWTSVIDRequest; response: gen.NewJWTSVIDResponse }
  GetBundle: { request: gen.GetBundleRequest; response: gen.GetBundleResponse }
  GetFederatedBundles: {
    request: gen.GetFederatedBundlesRequest
    response: gen.GetFederatedBundlesResponse
  }
}

export type CallMethod = keyof CallMethods

const MESSAGE_NAMES: Readonly<Record<CallMethod, readonly [string, string]>> = {
  RenewAgent: ['RenewAgentRequest', 'RenewAgentResponse'],
  SyncEntries: ['SyncEntriesRequest', 'SyncEntriesResponse'],
  BatchNewX509SVID: ['BatchNewX509SVIDRequest', 'BatchNewX509SVIDResponse'],
  NewJWTSVID: ['NewJWTSVIDRequest', 'NewJWTSVIDResponse'],
  GetBundle: ['GetBundleRequest', 'GetBundleResponse'],
  GetFederatedBundles: ['GetFederatedBundlesRequest', 'GetFederatedBundlesResponse'],
}

export function isCallMethod(m: string): m is CallMethod {
  return Object.hasOwn(MESSAGE_NAMES, m)
}

let root: protobuf.Root | undefined

function type(name: string): protobuf.Type {
  root ??= protobuf.loadSync(NODE_PROTO)
  return root.lookupType(`${NODE_PACKAGE}.${name}`)
}

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: Number,
  defaults: true,
  arrays: true,
  oneofs: false,
}

/**
 * What an encoder accepts: any field may be left out (proto3 sends defaults as absent), while
 * decoded messages always carry every scalar and repeated field (toObject with defaults).
 */
export type Init<T> = T extends Uint8Array
  ? T
  : T extends (infer U)[]
    ? Init<U>[]
    : T extends object
      ? { [K in keyof T]?: Init<T[K]> | null }
      : T

/**
 * A singular message field is absent on the wire unless the peer set it: a message the protocol
 * says must be there is checked, never assumed, since the peer may be a broker's relay.
 */
export function required<T>(value: T | null | undefined, field: string): T {
  if (value === null || value === undefined) throw new ProtocolError(`${field} is missing`)
  return value
}

function encode(name: string, value: object): Uint8Array {
  const t = type(name)
  const err = t.verify(value)
  if (err) throw new ProtocolError(`${name}: ${err}`)
  return t.encode(t.fromObject(value)).finish()
}

function decode<T>(name: string, bytes: Uint8Array): T {
  const t = type(name)
  try {
    return t.toObject(t.decode(bytes), TO_OBJECT) as T
  } catch (err) {
    throw new ProtocolError(`${name} does not decode: ${(err as Error).message}`)
  }
}

/** A message that is not what the protocol says. */
export class ProtocolError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_NODE_PROTOCOL', message, {
      remedy: 'the peer speaks another version of the node API or sent a corrupt message',
    })
  }
}

export const codec = {
  attestRequest: {
    encode: (m: Init<AttestAgentRequest>) => encode('AttestAgentRequest', m),
    decode: (b: Uint8Array) => decode<AttestAgentRequest>('AttestAgentRequest', b),
  },
  attestResponse: {
    encode: (m: Init<AttestAgentResponse>) => encode('AttestAgentResponse', m),
    decode: (b: Uint8Array) => decode<AttestAgentResponse>('AttestAgentResponse', b),
  },
  signedRequest: {
    encode: (m: Init<SignedRequest>) => encode('SignedRequest', m),
    decode: (b: Uint8Array) => decode<SignedRequest>('SignedRequest', b),
  },
  signedResponse: {
    encode: (m: Init<SignedResponse>) => encode('SignedResponse', m),
    decode: (b: Uint8Array) => decode<SignedResponse>('SignedResponse', b),
  },
  mqttAttestRequest: {
    encode: (m: Init<MqttAttestRequest>) => encode('MqttAttestRequest', m),
    decode: (b: Uint8Array) => decode<MqttAttestRequest>('MqttAttestRequest', b),
  },
  mqttAttestResponse: {
    encode: (m: Init<MqttAttestResponse>) => encode('MqttAttestResponse', m),
    decode: (b: Uint8Array) => decode<MqttAttestResponse>('MqttAttestResponse', b),
  },
  bundlePush: {
    encode: (m: Init<BundlePush>) => encode('BundlePush', m),
    decode: (b: Uint8Array) => decode<BundlePush>('BundlePush', b),
  },
  request<M extends CallMethod>(method: M) {
    const name = MESSAGE_NAMES[method][0]
    return {
      encode: (m: Init<CallMethods[M]['request']>) => encode(name, m),
      decode: (b: Uint8Array) => decode<CallMethods[M]['request']>(name, b),
    }
  },
  response<M extends CallMethod>(method: M) {
    const name = MESSAGE_NAMES[method][1]
    return {
      encode: (m: Init<CallMethods[M]['response']>) => encode(name, m),
      decode: (b: Uint8Array) => decode<CallMethods[M]['response']>(name, b),
    }
  },
}
