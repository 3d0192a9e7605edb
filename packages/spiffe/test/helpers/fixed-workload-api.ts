/**
 * A second, minimal Workload API implementation for the library's tests, built from the spec's
 * proto (proto/workload.proto through @grpc/proto-loader, not our codec): it serves whatever SVIDs
 * and bundles the test sets, pushes updates to open streams on `set()`, and checks the security
 * header as the spec requires. It lets the tests prove the library does not lean on our agent.
 */
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { TrustDomain } from '../../../../src/spiffe/id.js'
import { validateJwtSvid } from '../../../../src/spiffe/jwt-svid.js'
import { repoRoot } from '../../../../test/helpers/exec.js'
import { type IssuedSvid, jwtFor, type TestCa } from './pki.js'

export interface FixedState {
  svids: { svid: IssuedSvid; ca: TestCa; hint?: string }[]
  /** Federated trust domains, delivered with the SVIDs and in the bundle streams. */
  federated: TestCa[]
  /** Answer every stream with this gRPC status instead (e.g. PERMISSION_DENIED). */
  refuse?: grpc.status
}

export interface FixedWorkloadApi {
  readonly address: string
  set(state: FixedState): void
  /** Every request's security header value, in order. */
  readonly headers: string[]
  close(): Promise<void>
}

type Writable = grpc.ServerWritableStream<unknown, unknown>

const pkg = protoLoader.loadSync(join(repoRoot, 'proto', 'workload.proto'), {
  keepCase: false,
  longs: String,
  defaults: true,
  oneofs: true,
})
const api = grpc.loadPackageDefinition(pkg) as unknown as {
  SpiffeWorkloadAPI: { service: grpc.ServiceDefinition }
}

const tdKey = (ca: TestCa) => `spiffe://${ca.td.name}`

export async function startFixedWorkloadApi(
  socketPath: string,
  initial: FixedState,
): Promise<FixedWorkloadApi> {
  let state = initial
  const streams = {
    x509: new Set<Writable>(),
    x509b: new Set<Writable>(),
    jwtb: new Set<Writable>(),
  }
  const headers: string[] = []
  const headerOk = (md: grpc.Metadata): boolean => {
    const v = String(md.get('workload.spiffe.io')[0] ?? '')
    headers.push(v)
    return v === 'true'
  }
  const allCas = () => {
    const m = new Map<string, TestCa>()
    for (const s of state.svids) m.set(s.ca.td.name, s.ca)
    for (const f of state.federated) m.set(f.td.name, f)
    return [...m.values()]
  }
  const x509Msg = () => ({
    svids: state.svids.map((s) => ({
      spiffeId: s.svid.id,
      x509Svid: Buffer.from(s.svid.chain),
      x509SvidKey: Buffer.from(s.svid.key),
      bundle: Buffer.from(s.ca.certificate),
      hint: s.hint ?? '',
    })),
    federatedBundles: Object.fromEntries(
      state.federated.map((f) => [tdKey(f), Buffer.from(f.certificate)]),
    ),
  })
  const x509BundlesMsg = () => ({
    bundles: Object.fromEntries(allCas().map((c) => [tdKey(c), Buffer.from(c.certificate)])),
  })
  const jwtBundlesMsg = () => ({
    bundles: Object.fromEntries(
      allCas().map((c) => [tdKey(c), Buffer.from(c.bundle().toSpiffeJson())]),
    ),
  })
  const stream = (set: Set<Writable>, msg: () => unknown) => (call: Writable) => {
    if (!headerOk(call.metadata)) {
      call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: 'security header missing' })
      return
    }
    if (state.refuse !== undefined) {
      call.emit('error', { code: state.refuse, details: 'refused by the test' })
      return
    }
    set.add(call)
    call.on('cancelled', () => set.delete(call))
    call.write(msg())
  }
  const server = new grpc.Server()
  server.addService(api.SpiffeWorkloadAPI.service, {
    FetchX509SVID: stream(streams.x509, x509Msg),
    FetchX509Bundles: stream(streams.x509b, x509BundlesMsg),
    FetchJWTBundles: stream(streams.jwtb, jwtBundlesMsg),
    FetchJWTSVID: async (
      call: grpc.ServerUnaryCall<{ audience: string[]; spiffeId: string }, unknown>,
      cb: grpc.sendUnaryData<unknown>,
    ) => {
      if (!headerOk(call.metadata)) return cb({ code: grpc.status.INVALID_ARGUMENT })
      const wanted = state.svids.filter(
        (s) => !call.request.spiffeId || s.svid.id === call.request.spiffeId,
      )
      const svids = await Promise.all(
        wanted.map(async (s) => ({
          spiffeId: s.svid.id,
          svid: await jwtFor(
            s.ca,
            s.svid.id.replace(/^spiffe:\/\/[^/]+/, ''),
            call.request.audience,
          ),
          hint: s.hint ?? '',
        })),
      )
      cb(null, { svids })
    },
    ValidateJWTSVID: async (
      call: grpc.ServerUnaryCall<{ audience: string; svid: string }, unknown>,
      cb: grpc.sendUnaryData<unknown>,
    ) => {
      if (!headerOk(call.metadata)) return cb({ code: grpc.status.INVALID_ARGUMENT })
      try {
        const v = await validateJwtSvid(call.request.svid, {
          audience: call.request.audience,
          bundles: (td: TrustDomain) =>
            allCas()
              .find((c) => c.td.equals(td))
              ?.bundle()
              .jwtBundle(),
          now: new Date(),
        })
        const fields: Record<string, unknown> = {}
        for (const [k, v2] of Object.entries(v.claims)) {
          fields[k] = Array.isArray(v2)
            ? { listValue: { values: v2.map((s) => ({ stringValue: String(s) })) } }
            : typeof v2 === 'number'
              ? { numberValue: v2 }
              : { stringValue: String(v2) }
        }
        cb(null, { spiffeId: v.spiffeId.toString(), claims: { fields } })
      } catch (err) {
        cb({ code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message })
      }
    },
  })
  rmSync(socketPath, { force: true })
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (e) =>
      e ? reject(e) : resolve(),
    ),
  )
  return {
    address: `unix://${socketPath}`,
    headers,
    set(s) {
      state = s
      for (const c of streams.x509) c.write(x509Msg())
      for (const c of streams.x509b) c.write(x509BundlesMsg())
      for (const c of streams.jwtb) c.write(jwtBundlesMsg())
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.forceShutdown()
        resolve()
      }),
  }
}

export { TrustDomain }
