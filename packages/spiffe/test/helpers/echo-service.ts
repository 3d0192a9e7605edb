/** A one-method gRPC service over raw bytes for the tests: the server answers with what it saw. */
import type * as grpc from '@grpc/grpc-js'

const id = (b: Buffer) => b
export const whoService: grpc.ServiceDefinition = {
  Who: {
    path: '/spiffe_edge.test.Echo/Who',
    requestStream: false,
    responseStream: false,
    requestSerialize: id,
    requestDeserialize: id,
    responseSerialize: id,
    responseDeserialize: id,
  },
}
