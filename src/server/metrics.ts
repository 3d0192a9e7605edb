/**
 * The server's Prometheus metrics, named after SPIRE's telemetry keys (joined by '_', as SPIRE's
 * Prometheus sink writes them). They are attached from outside: the node API and the CA are
 * wrapped at the composition root, so the call loop and the CA carry no metrics code. Every label
 * takes values from a closed set (gRPC status names, configured attestor names, node API method
 * names, SVID kinds): never a SPIFFE ID, peer address or anything a caller chooses.
 */
import { status as grpcStatus } from '@grpc/grpc-js'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { newRegistry } from '../common/telemetry.js'
import { codec, isCallMethod } from '../transport/proto.js'
import type { CaManager } from './ca.js'
import type { AttestStream, NodeApi } from './node-api.js'

/** Node API calls take milliseconds; attestation with a TPM takes up to seconds. */
const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export function statusName(code: number): string {
  return grpcStatus[code] ?? 'UNKNOWN'
}

export class ServerMetrics {
  readonly registry: Registry
  readonly x509Signed: Counter<'svid_kind'>
  readonly jwtSigned: Counter
  readonly attestations: Counter<'status' | 'attestor'>
  readonly attestLatency: Histogram<'status' | 'attestor'>
  readonly calls: Counter<'method' | 'status'>
  readonly callLatency: Histogram<'method' | 'status'>
  private datastoreOk: () => boolean = () => true

  constructor(info: { trustDomain: string; version: string }) {
    const registry = newRegistry('spire_server_')
    this.registry = registry
    const startedAt = Date.now()
    this.x509Signed = new Counter({
      name: 'spire_server_server_ca_sign_x509_svid',
      help: 'X509-SVIDs signed by the CA, by kind (agent, server, workload)',
      labelNames: ['svid_kind'],
      registers: [registry],
    })
    this.jwtSigned = new Counter({
      name: 'spire_server_server_ca_sign_jwt_svid',
      help: 'JWT-SVIDs signed by the CA',
      registers: [registry],
    })
    this.attestations = new Counter({
      name: 'spire_server_rpc_agent_v1_agent_attest_agent',
      help: 'AttestAgent calls by gRPC status and node attestor',
      labelNames: ['status', 'attestor'],
      registers: [registry],
    })
    this.attestLatency = new Histogram({
      name: 'spire_server_rpc_agent_v1_agent_attest_agent_elapsed_seconds',
      help: 'AttestAgent duration, challenge rounds included',
      labelNames: ['status', 'attestor'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    })
    this.calls = new Counter({
      name: 'spire_server_rpc_node_v1_node_call',
      help: 'Signed node API calls (RenewAgent, SyncEntries, BatchNewX509SVID, ...) by method and status',
      labelNames: ['method', 'status'],
      registers: [registry],
    })
    this.callLatency = new Histogram({
      name: 'spire_server_rpc_node_v1_node_call_elapsed_seconds',
      help: 'Signed node API call duration (decode, authenticate, dispatch, sign)',
      labelNames: ['method', 'status'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    })
    const self = this
    new Gauge({
      name: 'spire_server_datastore_healthy',
      help: '1 when the last datastore health check passed, else 0',
      registers: [registry],
      collect() {
        this.set(self.datastoreOk() ? 1 : 0)
      },
    })
    new Gauge({
      name: 'spire_server_uptime_in_ms',
      help: 'Milliseconds since the server started',
      registers: [registry],
      collect() {
        this.set(Date.now() - startedAt)
      },
    })
    new Gauge({
      name: 'spire_server_started',
      help: 'Information about the server (always 1)',
      labelNames: ['version', 'trust_domain_id'],
      registers: [registry],
    }).set({ version: info.version, trust_domain_id: info.trustDomain }, 1)
  }

  /** Where the datastore gauge reads from (the server's health tick result). */
  watchDatastore(ok: () => boolean): void {
    this.datastoreOk = ok
  }

  /**
   * Counts every X509-SVID the CA signs, by what it is for (from its path, a closed set). Wraps
   * signX509Svids: signX509Svid goes through it, and batches (BatchNewX509SVID) call it directly.
   */
  instrumentCa(ca: CaManager): void {
    const signMany = ca.signX509Svids.bind(ca)
    ca.signX509Svids = async (list) => {
      const out = await signMany(list)
      out.forEach((r, i) => {
        if (r instanceof Error) return
        const path = list[i]!.spiffeId.path
        this.x509Signed.inc({
          svid_kind: path.startsWith('/spire/agent/')
            ? 'agent'
            : path === '/spire/server'
              ? 'server'
              : 'workload',
        })
      })
      return out
    }
  }

  /**
   * Wraps the node API's two entry points. AttestAgent is labelled by the attestor the agent named
   * (only when configured: an unknown name is 'unknown'), signed calls by method; both by status.
   */
  instrumentNodeApi(api: NodeApi, attestorNames: ReadonlySet<string>): void {
    const attest = api.attestAgent.bind(api)
    api.attestAgent = async (stream: AttestStream) => {
      const started = process.hrtime.bigint()
      let attestor = 'unknown'
      const receive = stream.receive.bind(stream)
      const watched: AttestStream = {
        peer: stream.peer,
        send: (m) => stream.send(m),
        receive: async () => {
          const m = await receive()
          const type = m.params?.data?.type
          if (type !== undefined && attestorNames.has(type)) attestor = type
          return m
        },
      }
      let status = 'OK'
      try {
        await attest(watched)
      } catch (err) {
        const code = (err as { status?: unknown }).status
        status = typeof code === 'number' ? statusName(code) : 'INTERNAL'
        throw err
      } finally {
        const labels = { status, attestor }
        this.attestations.inc(labels)
        this.attestLatency.observe(labels, Number(process.hrtime.bigint() - started) / 1e9)
      }
    }
    const call = api.call.bind(api)
    api.call = async (bytes: Uint8Array) => {
      const started = process.hrtime.bigint()
      const res = await call(bytes)
      let method = 'unknown'
      try {
        // The loop decoded it already; a second decode of a few hundred bytes keeps this file the
        // only one that knows about metrics.
        const m = codec.signedRequest.decode(bytes).method
        if (isCallMethod(m)) method = m
      } catch {
        // undecodable: 'unknown'
      }
      const labels = { method, status: statusName(res.errorCode) }
      this.calls.inc(labels)
      this.callLatency.observe(labels, Number(process.hrtime.bigint() - started) / 1e9)
      if (method === 'NewJWTSVID' && res.errorCode === 0) this.jwtSigned.inc()
      return res
    }
  }
}
