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

export interface Selector {
  type: string
  value: string
}

export interface X509SvidMessage {
  certChain: Uint8Array[]
  spiffeId: string
  expiresAt: number
  hint: string
}

export interface AttestAgentRequest {
  params?: { data: { type: string; payload: Uint8Array }; csr: Uint8Array }
  challengeResponse?: Uint8Array
}

export interface AttestAgentResponse {
  result?: { svid: X509SvidMessage; reattestable: boolean; selectors: Selector[]; bundle: string }
  challenge?: Uint8Array
}

export interface SignedRequest {
  method: string
  body: Uint8Array
  agentChain: Uint8Array[]
  timestampMs: number
  nonce: Uint8Array
  signature: Uint8Array
}

export interface SignedResponse {
  body: Uint8Array
  serverChain: Uint8Array[]
  timestampMs: number
  requestNonce: Uint8Array
  signature: Uint8Array
  errorCode: number
  errorMessage: string
  errorReason: string
}

export interface EntryMessage {
  id: string
  spiffeId: string
  parentId: string
  selectors: Selector[]
  x509SvidTtl: number
  federatesWith: string[]
  admin: boolean
  downstream: boolean
  expiresAt: number
  dnsNames: string[]
  revisionNumber: number
  jwtSvidTtl: number
  hint: string
  createdAt: number
}

/** Request and response bodies of the signed `Call` methods, by method name. */
export interface CallMethods {
  RenewAgent: { request: { csr: Uint8Array }; response: { svid: X509SvidMessage } }
  SyncEntries: {
    request: { sinceRevision: number; known?: { id: string; revisionNumber: number }[] }
    response: { revision: number; full: boolean; entries: EntryMessage[]; deletedIds: string[] }
  }
  BatchNewX509SVID: {
    request: { params: { entryId: string; csr: Uint8Array }[] }
    response: { results: { status: number; message: string; svid?: X509SvidMessage }[] }
  }
  NewJWTSVID: {
    request: { entryId: string; audience: string[] }
    response: { token: string; spiffeId: string; expiresAt: number; issuedAt: number; hint: string }
  }
  GetBundle: { request: Record<string, never>; response: { bundle: string; sequence: number } }
}

export type CallMethod = keyof CallMethods

const MESSAGE_NAMES: Readonly<Record<CallMethod, readonly [string, string]>> = {
  RenewAgent: ['RenewAgentRequest', 'RenewAgentResponse'],
  SyncEntries: ['SyncEntriesRequest', 'SyncEntriesResponse'],
  BatchNewX509SVID: ['BatchNewX509SVIDRequest', 'BatchNewX509SVIDResponse'],
  NewJWTSVID: ['NewJWTSVIDRequest', 'NewJWTSVIDResponse'],
  GetBundle: ['GetBundleRequest', 'GetBundleResponse'],
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

/** Like decode, but oneof members that are not set stay absent (not filled with defaults). */
function decodeOneof<T>(name: string, bytes: Uint8Array): T {
  const t = type(name)
  try {
    return t.toObject(t.decode(bytes), { ...TO_OBJECT, defaults: false }) as T
  } catch (err) {
    throw new ProtocolError(`${name} does not decode: ${(err as Error).message}`)
  }
}

/** A message that is not what the protocol says. */
export class ProtocolError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_PROTOCOL', message, {
      remedy: 'the peer speaks another version of the node API or sent a corrupt message',
    })
  }
}

export const codec = {
  attestRequest: {
    encode: (m: AttestAgentRequest) => encode('AttestAgentRequest', m),
    decode: (b: Uint8Array) => decodeOneof<AttestAgentRequest>('AttestAgentRequest', b),
  },
  attestResponse: {
    encode: (m: AttestAgentResponse) => encode('AttestAgentResponse', m),
    decode: (b: Uint8Array) => decodeOneof<AttestAgentResponse>('AttestAgentResponse', b),
  },
  signedRequest: {
    encode: (m: SignedRequest) => encode('SignedRequest', m),
    decode: (b: Uint8Array) => decode<SignedRequest>('SignedRequest', b),
  },
  signedResponse: {
    encode: (m: SignedResponse) => encode('SignedResponse', m),
    decode: (b: Uint8Array) => decode<SignedResponse>('SignedResponse', b),
  },
  request<M extends CallMethod>(method: M) {
    const name = MESSAGE_NAMES[method][0]
    return {
      encode: (m: CallMethods[M]['request']) => encode(name, m),
      decode: (b: Uint8Array) => decode<CallMethods[M]['request']>(name, b),
    }
  },
  response<M extends CallMethod>(method: M) {
    const name = MESSAGE_NAMES[method][1]
    return {
      encode: (m: CallMethods[M]['response']) => encode(name, m),
      decode: (b: Uint8Array) => decode<CallMethods[M]['response']>(name, b),
    }
  },
}
