/**
 * Envoy's SDS v3 wire types, loaded from the published Envoy API protos that @grpc/grpc-js-xds
 * ships (deps/envoy-api and the repositories they import), so no Envoy message is hand-written
 * here. The service is a raw-bytes grpc-js definition like the Workload API's (service.ts): the
 * handlers decode requests themselves so a malformed one becomes a coded INVALID_ARGUMENT.
 */

import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join } from 'node:path'
import type { ServiceDefinition } from '@grpc/grpc-js'
import protobuf from 'protobufjs'
import { WorkloadProtocolError } from './errors.js'
import { rawMethod } from './service.js'

export const SDS_SERVICE = 'envoy.service.secret.v3.SecretDiscoveryService'
export const SECRET_TYPE_URL =
  'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret'
const SPIFFE_VALIDATOR_TYPE_URL =
  'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig'
/** The name Envoy registers its SPIFFE certificate validator extension under. */
export const SPIFFE_VALIDATOR_NAME = 'envoy.tls.cert_validator.spiffe'

/** The include roots: Envoy's API and what it imports, then protobufjs's google/protobuf files. */
function protoDirs(): string[] {
  const req = createRequire(import.meta.url)
  const xds = dirname(req.resolve('@grpc/grpc-js-xds/package.json'))
  const pbjs = dirname(req.resolve('protobufjs/package.json'))
  const deps = ['envoy-api', 'xds', 'protoc-gen-validate', 'googleapis'].map((d) =>
    join(xds, 'deps', d),
  )
  return [...deps, pbjs]
}

/** Files an SDS server needs; their imports are followed through protoDirs(). */
export const SDS_PROTO_FILES = [
  'envoy/service/secret/v3/sds.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto',
] as const

let cached: protobuf.Root | undefined

/** The Envoy protos as a protobufjs Root (loaded once; ~150 ms). Also used by the tests' client. */
export function envoyRoot(): protobuf.Root {
  if (cached) return cached
  const dirs = protoDirs()
  const root = new protobuf.Root()
  root.resolvePath = (_origin, target) => {
    if (isAbsolute(target)) return target
    for (const d of dirs) {
      const p = join(d, target)
      if (existsSync(p)) return p
    }
    return target
  }
  root.loadSync([...SDS_PROTO_FILES], { keepCase: false })
  root.resolveAll()
  cached = root
  return root
}

export interface DataSourceMsg {
  readonly inlineBytes?: Uint8Array
}

export interface DiscoveryRequestMsg {
  readonly versionInfo: string
  readonly node?: {
    readonly userAgentName?: string
    readonly userAgentBuildVersion?: {
      readonly version?: { readonly majorNumber?: number; readonly minorNumber?: number }
    }
  }
  readonly resourceNames: string[]
  readonly typeUrl: string
  readonly responseNonce: string
  readonly errorDetail?: { readonly code?: number; readonly message?: string }
}

/**
 * A google.protobuf.Any as protobufjs encodes it. Opaque: protobufjs defines Any from its built-in
 * JSON with the field `type_url`, not camel-cased like the loaded files, so only sdsCodec builds it.
 */
export type AnyMsg = { readonly __any: true } & Record<string, unknown>

export interface SecretMsg {
  readonly name: string
  readonly tlsCertificate?: {
    readonly certificateChain: DataSourceMsg
    readonly privateKey: DataSourceMsg
  }
  readonly validationContext?: {
    readonly trustedCa?: DataSourceMsg
    readonly customValidatorConfig?: {
      readonly name: string
      readonly typedConfig: AnyMsg
    }
  }
}

export interface SpiffeValidatorMsg {
  readonly trustDomains: { readonly name: string; readonly trustBundle: DataSourceMsg }[]
}

export interface DiscoveryResponseMsg {
  readonly versionInfo: string
  readonly resources: AnyMsg[]
  readonly typeUrl: string
  readonly nonce: string
}

export interface SdsCodec {
  decodeRequest(b: Uint8Array): DiscoveryRequestMsg
  encodeResponse(m: DiscoveryResponseMsg): Uint8Array
  /** A Secret packed as the google.protobuf.Any a DiscoveryResponse carries. */
  secretAny(s: SecretMsg): AnyMsg
  /** A SPIFFECertValidatorConfig packed as the Any of a TypedExtensionConfig. */
  spiffeValidatorAny(v: SpiffeValidatorMsg): AnyMsg
}

export function sdsCodec(): SdsCodec {
  const root = envoyRoot()
  const req = root.lookupType('envoy.service.discovery.v3.DiscoveryRequest')
  const res = root.lookupType('envoy.service.discovery.v3.DiscoveryResponse')
  const secret = root.lookupType('envoy.extensions.transport_sockets.tls.v3.Secret')
  const spiffe = root.lookupType(
    'envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig',
  )
  const anyFields = root.lookupType('google.protobuf.Any').fields
  const urlField = 'typeUrl' in anyFields ? 'typeUrl' : 'type_url'
  const any = (typeUrl: string, value: Uint8Array): AnyMsg =>
    ({ [urlField]: typeUrl, value }) as unknown as AnyMsg
  return {
    decodeRequest(b) {
      let m: protobuf.Message
      try {
        m = req.decode(b)
      } catch (err) {
        throw new WorkloadProtocolError(`malformed DiscoveryRequest: ${(err as Error).message}`)
      }
      const o = req.toObject(m, { defaults: true, arrays: true, longs: Number })
      return o as DiscoveryRequestMsg
    },
    encodeResponse: (m) => res.encode(m).finish(),
    secretAny: (s) => any(SECRET_TYPE_URL, secret.encode(s).finish()),
    spiffeValidatorAny: (v) => any(SPIFFE_VALIDATOR_TYPE_URL, spiffe.encode(v).finish()),
  }
}

/**
 * sdsCodec() built on first use: the Envoy protos, parsed, are a few MiB of the agent's RSS
 * (bench/agent-modules.ts) that an agent no Envoy talks to never needs. The first SDS call pays
 * their load (~150 ms); a load that fails fails that call and is retried by the next.
 */
export function lazySdsCodec(): SdsCodec {
  let codec: SdsCodec | undefined
  const get = () => {
    codec ??= sdsCodec()
    return codec
  }
  return {
    decodeRequest: (b) => get().decodeRequest(b),
    encodeResponse: (m) => get().encodeResponse(m),
    secretAny: (s) => get().secretAny(s),
    spiffeValidatorAny: (v) => get().spiffeValidatorAny(v),
  }
}

/** Whether the Envoy protos have been loaded in this process (tests of what start leaves out). */
export const envoyProtosLoaded = (): boolean => cached !== undefined

const method = (name: string, requestStream: boolean, responseStream: boolean) =>
  rawMethod(SDS_SERVICE, name, requestStream, responseStream)

export const sdsServiceDefinition: ServiceDefinition = {
  StreamSecrets: method('StreamSecrets', true, true),
  DeltaSecrets: method('DeltaSecrets', true, true),
  FetchSecrets: method('FetchSecrets', false, false),
}
