/**
 * An SDS client written against Envoy's published protos only (the copies @grpc/grpc-js-xds ships),
 * with grpc-js's generic client from @grpc/proto-loader: none of the agent's SDS code is used, so a
 * test passes only if the agent speaks the protocol as Envoy expects. It behaves as Envoy's SDS
 * subscription does: a request names the resources, each response is ACKed (its version_info and
 * nonce echoed) or NACKed (error_detail set, the previous version echoed).
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import protobuf from 'protobufjs'

const req = createRequire(import.meta.url)
const xds = dirname(req.resolve('@grpc/grpc-js-xds/package.json'))
const includeDirs = ['envoy-api', 'xds', 'protoc-gen-validate', 'googleapis']
  .map((d) => join(xds, 'deps', d))
  .concat([dirname(req.resolve('protobufjs/package.json'))])
const FILES = [
  'envoy/service/secret/v3/sds.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto',
]

export interface Secret {
  name: string
  tls_certificate?: {
    certificate_chain: { inline_bytes: Buffer }
    private_key: { inline_bytes: Buffer }
  }
  validation_context?: {
    trusted_ca?: { inline_bytes: Buffer }
    custom_validator_config?: { name: string; typed_config: { type_url: string; value: Buffer } }
  }
}

export interface Response {
  version_info: string
  nonce: string
  type_url: string
  resources: { type_url: string; value: Buffer }[]
}

let root: protobuf.Root | undefined
function decoderRoot(): protobuf.Root {
  if (root) return root
  const r = new protobuf.Root()
  r.resolvePath = (_o, t) => {
    if (isAbsolute(t)) return t
    for (const d of includeDirs) if (existsSync(join(d, t))) return join(d, t)
    return t
  }
  r.loadSync(FILES, { keepCase: true })
  r.resolveAll()
  root = r
  return r
}

const TLS = 'envoy.extensions.transport_sockets.tls.v3'
export const SECRET_TYPE = `type.googleapis.com/${TLS}.Secret`

export function decodeSecret(any: { type_url: string; value: Buffer }): Secret {
  if (any.type_url !== SECRET_TYPE) throw new Error(`not a Secret: ${any.type_url}`)
  const t = decoderRoot().lookupType(`${TLS}.Secret`)
  return t.toObject(t.decode(any.value), { bytes: Buffer }) as Secret
}

/** A DiscoveryResponse from its wire bytes (for unit tests of the response builder). */
export function decodeResponse(b: Uint8Array): Response {
  const t = decoderRoot().lookupType('envoy.service.discovery.v3.DiscoveryResponse')
  return t.toObject(t.decode(b), { bytes: Buffer, arrays: true, defaults: true }) as Response
}

export function decodeSpiffeValidator(any: { type_url: string; value: Buffer }): {
  trust_domains: { name: string; trust_bundle: { inline_bytes: Buffer } }[]
} {
  const t = decoderRoot().lookupType(`${TLS}.SPIFFECertValidatorConfig`)
  assertType(any.type_url, `type.googleapis.com/${TLS}.SPIFFECertValidatorConfig`)
  return t.toObject(t.decode(any.value), { bytes: Buffer, arrays: true }) as never
}

function assertType(got: string, want: string): void {
  if (got !== want) throw new Error(`type_url ${got}, want ${want}`)
}

type Ctor = new (
  address: string,
  creds: grpc.ChannelCredentials,
) => grpc.Client & {
  StreamSecrets(): grpc.ClientDuplexStream<unknown, Response>
  FetchSecrets(
    r: unknown,
    cb: (err: grpc.ServiceError | null, res?: Response) => void,
  ): grpc.ClientUnaryCall
}

let ctor: Ctor | undefined
function clientCtor(): Ctor {
  if (ctor) return ctor
  const def = loadSync(FILES, { keepCase: true, longs: String, defaults: true, includeDirs })
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    envoy: { service: { secret: { v3: { SecretDiscoveryService: Ctor } } } }
  }
  ctor = pkg.envoy.service.secret.v3.SecretDiscoveryService
  return ctor
}

/** The node Envoy 1.30 sends (SPIRE picks the SPIFFE validator from this version). */
export const ENVOY_NODE = {
  id: 'test-envoy',
  cluster: 'test',
  user_agent_name: 'envoy',
  user_agent_build_version: { version: { major_number: 1, minor_number: 30, patch: 0 } },
}

export interface DiscoveryRequest {
  version_info?: string
  node?: unknown
  resource_names?: string[]
  type_url?: string
  response_nonce?: string
  error_detail?: { code: number; message: string }
}

export class SdsStream {
  readonly responses: Response[] = []
  error: grpc.ServiceError | undefined
  ended = false
  private waiters: (() => void)[] = []
  private readonly call: grpc.ClientDuplexStream<unknown, Response>

  constructor(call: grpc.ClientDuplexStream<unknown, Response>) {
    this.call = call
    const wake = () => {
      for (const w of this.waiters.splice(0)) w()
    }
    call.on('data', (r: Response) => {
      this.responses.push(r)
      wake()
    })
    call.on('error', (e: grpc.ServiceError) => {
      this.error = e
      wake()
    })
    call.on('end', () => {
      this.ended = true
      wake()
    })
  }

  send(r: DiscoveryRequest): void {
    this.call.write({ type_url: SECRET_TYPE, ...r })
  }

  /** Waits for response number `index` (0-based), or the stream's error, up to `ms`. */
  async response(index: number, ms = 30_000): Promise<Response> {
    const deadline = Date.now() + ms
    while (this.responses.length <= index) {
      if (this.error) throw this.error
      if (this.ended) throw new Error('stream ended')
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no response #${index} within ${ms} ms`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, left)
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
    return this.responses[index]!
  }

  /** Waits for the stream to fail; returns its status. */
  async failure(ms = 30_000): Promise<grpc.ServiceError> {
    const deadline = Date.now() + ms
    while (!this.error) {
      if (Date.now() > deadline) throw new Error(`stream did not fail within ${ms} ms`)
      await new Promise((r) => setTimeout(r, 20))
    }
    return this.error
  }

  close(): void {
    this.call.cancel()
  }

  /** Ends the requests (as Envoy does when it stops the subscription gracefully). */
  halfClose(): void {
    this.call.end()
  }
}

export class EnvoySdsClient {
  private readonly client: InstanceType<Ctor>

  constructor(socketPath: string) {
    const C = clientCtor()
    this.client = new C(`unix:${socketPath}`, grpc.credentials.createInsecure())
  }

  stream(): SdsStream {
    return new SdsStream(this.client.StreamSecrets())
  }

  fetch(r: DiscoveryRequest): Promise<Response> {
    return new Promise((resolve, reject) =>
      this.client.FetchSecrets({ type_url: SECRET_TYPE, ...r }, (err, res) =>
        err ? reject(err) : resolve(res!),
      ),
    )
  }

  close(): void {
    this.client.close()
  }
}
