/**
 * The agent's Prometheus metrics, named after SPIRE's telemetry keys (joined by '_', as SPIRE's
 * Prometheus sink writes them). They are attached from outside: the node client and the
 * Workload API handlers are wrapped at the composition root, gauges read the manager at scrape
 * time, and TPM commands report through src/tpm/command-observer.ts. Labels come from closed sets
 * (gRPC method and status names, node API methods, ESAPI command names): never a SPIFFE ID, a
 * selector, a PID or anything a caller chooses.
 */
import { status as grpcStatus, type UntypedServiceImplementation } from '@grpc/grpc-js'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { newRegistry } from '../common/telemetry.js'
import { setTpmCommandObserver } from '../tpm/command-observer.js'
import type { NodeClient } from '../transport/node-client.js'
import { isCallMethod } from '../transport/proto.js'

const LATENCY_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
/** SPIRE's sync call counters for the two node API calls its sync manager makes. */
const SYNC_NAMES: Record<string, string> = {
  SyncEntries: 'fetch_entries_updates',
  BatchNewX509SVID: 'fetch_svids_updates',
}
const WORKLOAD_METHODS = new Set([
  'FetchX509SVID',
  'FetchX509Bundles',
  'FetchJWTSVID',
  'FetchJWTBundles',
  'ValidateJWTSVID',
])

function statusName(code: unknown): string {
  return typeof code === 'number' ? (grpcStatus[code] ?? 'UNKNOWN') : 'UNKNOWN'
}

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9
}

/** What the gauges read at scrape time (the manager's own state, from memory). */
export interface AgentMetricsSource {
  cachedSvidCount(): number
  health(): { lastSyncOk?: string; failures: number }
}

export class AgentMetrics {
  readonly registry: Registry
  readonly nodeCalls: Counter<'method' | 'status'>
  readonly nodeCallLatency: Histogram<'method' | 'status'>
  readonly attestations: Counter<'status'>
  readonly workloadCalls: Counter<'method' | 'status'>
  readonly workloadLatency: Histogram<'method' | 'status'>
  readonly tpmCommands: Histogram<'command' | 'result'>
  private source: AgentMetricsSource | undefined
  private workloadApi: { readonly connections: number } | undefined
  private readonly startedAt = Date.now()

  constructor(info: { trustDomain: string; version: string }) {
    const registry = newRegistry('spire_agent_')
    this.registry = registry
    this.nodeCalls = new Counter({
      name: 'spire_agent_manager_sync',
      help: 'Node API calls the sync manager made, by method (fetch_entries_updates = SyncEntries, fetch_svids_updates = BatchNewX509SVID, or the node API method) and gRPC status',
      labelNames: ['method', 'status'],
      registers: [registry],
    })
    this.nodeCallLatency = new Histogram({
      name: 'spire_agent_manager_sync_elapsed_seconds',
      help: 'Node API call latency seen by the agent (signing with the agent key included)',
      labelNames: ['method', 'status'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    })
    this.attestations = new Counter({
      name: 'spire_agent_node_attestor_new_svid',
      help: 'Node attestations (AttestAgent) by gRPC status',
      labelNames: ['status'],
      registers: [registry],
    })
    this.workloadCalls = new Counter({
      name: 'spire_agent_rpc_workload_api',
      help: 'Workload API calls by method and gRPC status (a stream is counted when it sends its first response or fails)',
      labelNames: ['method', 'status'],
      registers: [registry],
    })
    this.workloadLatency = new Histogram({
      name: 'spire_agent_rpc_workload_api_elapsed_seconds',
      help: 'Workload API latency: to the response (unary) or to the first message (streams), caller attestation included',
      labelNames: ['method', 'status'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    })
    this.tpmCommands = new Histogram({
      name: 'spire_agent_tpm_command_elapsed_seconds',
      help: 'TPM command latency by ESAPI command and result (ok, error)',
      labelNames: ['command', 'result'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    })
    const self = this
    new Gauge({
      name: 'spire_agent_lru_cache_svid_map_size',
      help: 'X509-SVIDs in the agent cache',
      registers: [registry],
      collect() {
        if (self.source) this.set(self.source.cachedSvidCount())
      },
    })
    new Gauge({
      name: 'spire_agent_manager_sync_offline_seconds',
      help: 'Seconds since the last successful sync with the server (since start when none yet)',
      registers: [registry],
      collect() {
        const last = self.source?.health().lastSyncOk
        const since = last === undefined ? self.startedAt : Date.parse(last)
        this.set(Math.max(0, (Date.now() - since) / 1000))
      },
    })
    new Gauge({
      name: 'spire_agent_manager_sync_consecutive_failures',
      help: 'Sync rounds failed in a row (0 after a successful one)',
      registers: [registry],
      collect() {
        this.set(self.source?.health().failures ?? 0)
      },
    })
    new Gauge({
      name: 'spire_agent_workload_api_connections',
      help: 'Open Workload API connections',
      registers: [registry],
      collect() {
        this.set(self.workloadApi?.connections ?? 0)
      },
    })
    new Gauge({
      name: 'spire_agent_uptime_in_ms',
      help: 'Milliseconds since the agent started',
      registers: [registry],
      collect() {
        this.set(Date.now() - self.startedAt)
      },
    })
    new Gauge({
      name: 'spire_agent_started',
      help: 'Information about the agent (always 1)',
      labelNames: ['version', 'trust_domain_id'],
      registers: [registry],
    }).set({ version: info.version, trust_domain_id: info.trustDomain }, 1)
  }

  /** The manager, once it exists: the cache and offline gauges read it at scrape time. */
  watch(source: AgentMetricsSource): void {
    this.source = source
  }

  /** The Workload API endpoint, once listening: its open connections are a gauge. */
  watchWorkloadApi(api: { readonly connections: number }): void {
    this.workloadApi = api
  }

  /** Times TPM commands from now on (process-wide: one agent per process). */
  observeTpm(): () => void {
    const prev = setTpmCommandObserver((command, s, ok) =>
      this.tpmCommands.observe({ command, result: ok ? 'ok' : 'error' }, s),
    )
    return () => {
      setTpmCommandObserver(prev)
    }
  }

  /** The same client, its calls counted and timed. */
  instrumentClient(client: NodeClient): NodeClient {
    const m = this
    return {
      async attestAgent(attestor, signer) {
        let status = 'OK'
        try {
          return await client.attestAgent(attestor, signer)
        } catch (err) {
          status = statusName((err as { status?: unknown }).status)
          throw err
        } finally {
          m.attestations.inc({ status })
        }
      },
      async call(method, body, auth) {
        const started = process.hrtime.bigint()
        const name = isCallMethod(method) ? (SYNC_NAMES[method] ?? method) : 'unknown'
        let status = 'OK'
        try {
          return await client.call(method, body, auth)
        } catch (err) {
          // NodeCallError carries the server's gRPC code; unreachable servers are UNAVAILABLE.
          status = statusName((err as { status?: unknown }).status)
          throw err
        } finally {
          m.nodeCalls.inc({ method: name, status })
          m.nodeCallLatency.observe({ method: name, status }, seconds(started))
        }
      },
      setBundle: (b) => client.setBundle(b),
      currentBundle: () => client.currentBundle(),
      warmUp: () => client.warmUp?.(),
      close: () => client.close(),
    }
  }

  /** The Workload API handlers, each call counted once with its status and timed. */
  instrumentWorkloadApi(handlers: UntypedServiceImplementation): UntypedServiceImplementation {
    const out: UntypedServiceImplementation = {}
    for (const [name, handler] of Object.entries(handlers)) {
      const method = WORKLOAD_METHODS.has(name) ? name : 'unknown'
      const h = handler as (...a: unknown[]) => unknown
      out[name] = ((call: WatchedCall, callback?: (err: unknown, v?: unknown) => void) => {
        const started = process.hrtime.bigint()
        let counted = false
        const count = (status: string) => {
          if (counted) return
          counted = true
          this.workloadCalls.inc({ method, status })
          this.workloadLatency.observe({ method, status }, seconds(started))
        }
        if (typeof callback === 'function') {
          return h(call, (err: { code?: unknown } | null, value?: unknown) => {
            count(err ? statusName(err.code) : 'OK')
            callback(err, value)
          })
        }
        // Server streams: the first message or the first error settles the call.
        const write = call.write.bind(call)
        call.write = (...a: unknown[]) => {
          count('OK')
          return write(...a)
        }
        const emit = call.emit.bind(call)
        call.emit = (event: string | symbol, ...a: unknown[]) => {
          if (event === 'error') count(statusName((a[0] as { code?: unknown })?.code))
          return emit(event, ...a)
        }
        call.once('cancelled', () => count('CANCELLED'))
        return h(call)
      }) as UntypedServiceImplementation[string]
    }
    return out
  }
}

interface WatchedCall {
  write(...a: unknown[]): boolean
  emit(event: string | symbol, ...a: unknown[]): boolean
  once(event: string, l: () => void): unknown
}
