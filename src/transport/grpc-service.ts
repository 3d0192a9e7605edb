/**
 * The node API as a grpc-js service definition over raw bytes: messages are (de)serialized by our
 * own codec in the handlers, so a malformed message becomes a coded INVALID_ARGUMENT rather than a
 * transport error, and a signed body is verified over exactly the bytes that were sent.
 */
import type { ServiceDefinition } from '@grpc/grpc-js'

const identity = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)
const raw = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

export const NODE_SERVICE_PATH = '/spiffe_edge.node.v1.Node'

export const nodeServiceDefinition: ServiceDefinition = {
  AttestAgent: {
    path: `${NODE_SERVICE_PATH}/AttestAgent`,
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: raw,
    responseSerialize: identity,
    responseDeserialize: raw,
    originalName: 'attestAgent',
  },
  Call: {
    path: `${NODE_SERVICE_PATH}/Call`,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: raw,
    responseSerialize: identity,
    responseDeserialize: raw,
    originalName: 'call',
  },
}
