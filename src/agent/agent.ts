/**
 * The agent's composition root: config → key manager, state, node client, node attestor, manager
 * (the cache), workload attestors and the Workload API endpoint. Nothing here decides policy.
 */

import { lstatSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError } from '../common/config.js'
import { acquireDataDirLock } from '../common/datadir-lock.js'
import { type HealthListener, startHealthListener } from '../common/health-http.js'
import { type Log, Logger } from '../common/log.js'
import { packageVersion } from '../common/package-root.js'
import type { MetricsListener } from '../common/telemetry.js'
import { SpiffeEdgeError } from '../errors.js'
import { parsePemCertificates, TrustBundle } from '../spiffe/bundle.js'
import { TrustDomain } from '../spiffe/id.js'
import { SealedSvidStore } from './cache/sealed-svids.js'
import type { AgentConfig } from './config.js'
import { AgentManager } from './manager.js'
import type { AgentMetrics } from './metrics.js'
import { nodeClient } from './node-client.js'
import { fileSealer, nodeIdentity, workloadAttestors } from './plugins.js'
import { AgentStorage } from './storage.js'
import { socketIsLive } from './workload-api/endpoint.js'
import { startWorkloadApi } from './workload-api/server.js'

export interface RunningAgent extends AsyncDisposable {
  readonly manager: AgentManager
  readonly socketPath: string
  /**
   * Settles when the agent stopped on its own because the server will never accept it again
   * (banned, evicted): the Workload API is closed by then. The owner should exit non-zero.
   */
  readonly terminated: Promise<SpiffeEdgeError>
  /** The agent's own logger (absent when the caller passed `log`): SIGHUP reopens its file. */
  readonly logger?: Logger
  close(): Promise<void>
}

/** A second agent on a live socket must fail before it spends its join token on attestation. */
async function checkSocketFree(path: string): Promise<void> {
  let isSocket: boolean
  try {
    isSocket = lstatSync(path).isSocket()
  } catch {
    return // nothing there
  }
  // The same liveness probe the endpoint uses before it replaces a stale socket.
  const live = isSocket && (await socketIsLive(path))
  if (!isSocket || live) {
    throw new SpiffeEdgeError(
      'ERR_WORKLOAD_SOCKET_IN_USE',
      isSocket
        ? `another process is listening on the Workload API socket ${path}`
        : `${path} exists and is not a socket`,
      {
        remedy: isSocket
          ? 'stop the other agent, or give this one another socket_path / --socket-path (nothing was attested)'
          : 'remove the file or choose another socket_path (nothing was attested)',
      },
    )
  }
}

function bootstrapBundle(config: AgentConfig, td: TrustDomain): TrustBundle | 'insecure' {
  if (config.insecureBootstrap) return 'insecure'
  let pem: string
  try {
    pem = readFileSync(config.trustBundlePath!, 'utf8')
  } catch (err) {
    throw new ConfigError('agent.trust_bundle_path', [
      `${config.trustBundlePath}: ${(err as Error).message}`,
    ])
  }
  const certs = parsePemCertificates(pem)
  if (certs.length === 0) {
    throw new ConfigError('agent.trust_bundle_path', [
      `${config.trustBundlePath} holds no PEM certificate`,
    ])
  }
  return new TrustBundle({ trustDomain: td, x509Authorities: certs })
}

export async function startAgent(
  config: AgentConfig,
  opts: { log?: Log } = {},
): Promise<RunningAgent> {
  // One agent per data dir: two would share the state database and the SVID keys.
  const lock = acquireDataDirLock(config.dataDir, 'agent')
  let logger: Logger | undefined
  try {
    logger = opts.log ? undefined : new Logger(config.log, 'agent')
    const agent = await startAgentLocked(config, { log: opts.log ?? logger!.log })
    const close = async () => {
      try {
        await agent.close()
      } finally {
        logger?.close()
        lock.release()
      }
    }
    return { ...agent, ...(logger ? { logger } : {}), close, [Symbol.asyncDispose]: close }
  } catch (err) {
    logger?.close()
    lock.release()
    throw err
  }
}

async function startAgentLocked(config: AgentConfig, opts: { log: Log }): Promise<RunningAgent> {
  const log = opts.log
  const td = TrustDomain.parse(config.trustDomain)
  const attestors = workloadAttestors(config)
  await checkSocketFree(config.socketPath)
  // prom-client (and the metrics module) only when [telemetry] asks for them: an agent without
  // it should not pay their load time on a cold start (docs/benchmarks.md, offline cold start).
  const metrics: AgentMetrics | undefined = config.telemetry
    ? new (await import('./metrics.js')).AgentMetrics({
        trustDomain: td.name,
        version: packageVersion(),
      })
    : undefined
  // Before the TPM is opened, so the attestation's own commands are timed too.
  const stopTpmObserver = metrics?.observeTpm()
  const identity = await nodeIdentity(config).catch((err: unknown) => {
    stopTpmObserver?.()
    throw err
  })
  const { attestor, keyManager } = identity
  let storage: AgentStorage
  let bundle: TrustBundle | 'insecure'
  try {
    const opened = AgentStorage.open(join(config.dataDir, 'agent.sqlite3'))
    storage = opened.storage
    if (opened.recovered) {
      log('warn', 'agent state was unreadable and was moved aside; attesting again', {
        remedy: 'if attestation fails, give the agent a new join token',
      })
    }
    // After the first attestation the bundle we keep in sync is the trust anchor, not the
    // bootstrap file: that one names CAs that rotate away (and it may be gone).
    const saved = storage.load().bundle
    try {
      bundle = saved ? TrustBundle.fromSpiffeJson(td, saved) : bootstrapBundle(config, td)
      if (bundle === 'insecure') {
        log(
          'warn',
          'insecure_bootstrap: the first server to answer is trusted (trust on first use)',
          {
            remedy:
              'for production, set trust_bundle_path to the server bundle (server bundle show)',
          },
        )
      }
    } catch (err) {
      storage.close()
      throw err
    }
  } catch (err) {
    await identity.close()
    throw err
  }
  let sealed: SealedSvidStore
  let client: ReturnType<typeof nodeClient>
  try {
    sealed = await SealedSvidStore.open({
      dataDir: config.dataDir,
      sealer: identity.sealer ?? fileSealer(config),
      trustDomain: td,
      log,
    })
    const raw = nodeClient(config, td, bundle)
    client = metrics ? metrics.instrumentClient(raw) : raw
  } catch (err) {
    storage.close()
    await identity.close()
    throw err
  }
  let onFatal: (err: SpiffeEdgeError) => void = () => undefined
  let fatalError: SpiffeEdgeError | undefined
  const terminated = new Promise<SpiffeEdgeError>((resolve) => {
    onFatal = (err) => {
      fatalError = err
      resolve(err)
    }
  })
  const manager = new AgentManager({
    onFatal: (err) => onFatal(err),
    trustDomain: td,
    client,
    storage,
    keyManager,
    attestor,
    workloadKeyType: config.workloadKeyType,
    syncIntervalMs: config.syncIntervalSeconds * 1000,
    cacheMaxSize: config.x509SvidCacheMaxSize,
    sealed,
    availabilityTargetMs: config.availabilityTargetSeconds * 1000,
    log,
  })
  metrics?.watch(manager)
  try {
    await manager.start()
  } catch (err) {
    client.close()
    storage.close()
    await identity.close()
    stopTpmObserver?.()
    throw fatalError ?? err
  }
  const api = await startWorkloadApi({
    socketPath: config.socketPath,
    source: manager,
    attestors,
    trustDomain: td,
    sds: config.sds,
    log,
    // An expired agent SVID means nothing new can be issued: report it like SPIRE does.
    ready: () =>
      manager.health().ready &&
      (identity.tpmHealthy?.() ?? true) &&
      (identity.keysHealthy?.() ?? true),
    ...(metrics ? { wrapHandlers: (h) => metrics.instrumentWorkloadApi(h) } : {}),
  })
  let health: HealthListener | undefined
  let metricsListener: MetricsListener | undefined
  /** Stops everything started so far, newest first (a failed start and close() alike). */
  const teardown = async () => {
    await metricsListener?.close()
    await health?.close()
    await api.close()
    await manager.stop()
    client.close()
    storage.close()
    await identity.close()
    stopTpmObserver?.()
  }
  if (config.healthChecks) {
    try {
      health = await startHealthListener(config.healthChecks, {
        live: () => ({ ok: true }),
        ready: () => {
          const h = manager.health()
          const tpm = identity.tpmHealthy?.() ?? true
          return { ok: h.ready && tpm, details: { agent_id: h.agentId, failures: h.failures, tpm } }
        },
      })
      log('info', 'health checks listening', {
        address: `${config.healthChecks.bindAddress}:${health.port}`,
      })
    } catch (err) {
      await teardown()
      throw err
    }
  }
  metrics?.watchWorkloadApi(api)
  if (config.telemetry) {
    try {
      const { startMetricsListener } = await import('../common/telemetry.js')
      metricsListener = await startMetricsListener(config.telemetry, metrics!.registry)
      log('info', 'metrics listening', {
        address: `${config.telemetry.host}:${metricsListener.port}`,
      })
    } catch (err) {
      await teardown()
      throw err
    }
  }
  log('info', 'agent started', {
    agent: manager.agentId,
    socket: config.socketPath,
    server: config.serverAddress,
    // Process start to serving: the cold-start figure (bench/offline-start.ts reads it).
    uptime_ms: Math.round(performance.now()),
    // The same in CPU time (user + system), which a loaded machine does not inflate.
    cpu_ms: Math.round((process.cpuUsage().user + process.cpuUsage().system) / 1000),
    cached_svids: manager.cachedSvidCount(),
  })
  let closing: Promise<void> | undefined
  const close = () => {
    closing ??= (async () => {
      await teardown()
      log('info', 'agent stopped')
    })()
    return closing
  }
  // Stop serving at once: nothing this agent holds will be renewed.
  void terminated.then(() => close())
  return {
    manager,
    socketPath: config.socketPath,
    terminated,
    close,
    [Symbol.asyncDispose]: close,
  }
}
