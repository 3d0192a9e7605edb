/**
 * The Workload API as a grpc-js definition over raw bytes (health and reflection: side-services.ts): messages are
 * (de)coded by proto.ts in the handlers, so a malformed request becomes a coded INVALID_ARGUMENT.
 * Paths are package-less for the Workload API (/SpiffeWorkloadAPI/<Method>), as the spec fixes.
 */
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js'

const bytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)
const raw = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

/** A raw-bytes method definition (also used by the SDS service, sds-proto.ts). */
export function rawMethod(
  service: string,
  name: string,
  requestStream: boolean,
  responseStream: boolean,
): MethodDefinition<Uint8Array, Uint8Array> {
  return {
    path: `/${service}/${name}`,
    requestStream,
    responseStream,
    requestSerialize: bytes,
    requestDeserialize: raw,
    responseSerialize: bytes,
    responseDeserialize: raw,
    originalName: name.charAt(0).toLowerCase() + name.slice(1),
  }
}

/** The metadata every Workload API call must carry, exactly once, with the value 'true'. */
export const SECURITY_HEADER = 'workload.spiffe.io'

export const WORKLOAD_SERVICE = 'SpiffeWorkloadAPI'
export const HEALTH_SERVICE = 'grpc.health.v1.Health'

export const workloadServiceDefinition: ServiceDefinition = {
  FetchX509SVID: rawMethod(WORKLOAD_SERVICE, 'FetchX509SVID', false, true),
  FetchX509Bundles: rawMethod(WORKLOAD_SERVICE, 'FetchX509Bundles', false, true),
  FetchJWTSVID: rawMethod(WORKLOAD_SERVICE, 'FetchJWTSVID', false, false),
  FetchJWTBundles: rawMethod(WORKLOAD_SERVICE, 'FetchJWTBundles', false, true),
  ValidateJWTSVID: rawMethod(WORKLOAD_SERVICE, 'ValidateJWTSVID', false, false),
  FetchWITSVID: rawMethod(WORKLOAD_SERVICE, 'FetchWITSVID', false, true),
  FetchWITBundles: rawMethod(WORKLOAD_SERVICE, 'FetchWITBundles', false, true),
}
