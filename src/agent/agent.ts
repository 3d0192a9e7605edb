/**
 * The agent's composition root: config → key manager, state, node client, node attestor, manager
 * (the cache), workload attestors and the Workload API endpoint. Nothing here decides policy.
 */

import { lstatSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { joinTokenAgentAttestor } from '../attestors/join-token/agent.js'
import { parseTpmAgentConfig, tpmAgentAttestor } from '../attestors/tpm/agent.js'
import type { AgentNodeAttestor } from '../attestors/types.js'
import { ConfigError, type Table } from '../common/config.js'
import { acquireDataDirLock } from '../common/datadir-lock.js'
import { jsonLogger, type Log } from '../common/log.js'
import { SpiffeEdgeError } from '../errors.js'
import { DiskKeyManager } from '../keymanager/disk.js'
import { MemoryKeyManager } from '../keymanager/memory.js'
import { type TpmKey, TpmKeyManager } from '../keymanager/tpm.js'
import type { KeyManager } from '../keymanager/types.js'
import { parsePemCertificates, TrustBundle } from '../spiffe/bundle.js'
import { TrustDomain } from '../spiffe/id.js'
import { TpmContext } from '../tpm/context.js'
import { GrpcNodeClient } from '../transport/grpc-client.js'
import type { AgentConfig } from './config.js'
import { AgentManager } from './manager.js'
import { AgentStorage } from './storage.js'
import { dockerAttestor } from './workload-api/attestors/docker.js'
import { systemdAttestor } from './workload-api/attestors/systemd.js'
import { unixAttestor } from './workload-api/attestors/unix.js'
import { startWorkloadApi } from './workload-api/server.js'
import type { WorkloadAttestor } from './workload-api/types.js'

export interface RunningAgent extends AsyncDisposable {
  readonly manager: AgentManager
  readonly socketPath: string
  /**
   * Settles when the agent stopped on its own because the server will never accept it again
   * (banned, evicted): the Workload API is closed by then. The owner should exit non-zero.
   */
  readonly terminated: Promise<SpiffeEdgeError>
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
  const live =
    isSocket &&
    (await new Promise<boolean>((resolve) => {
      const s = connect(path)
      const done = (v: boolean) => {
        s.destroy()
        resolve(v)
      }
      s.setTimeout(2000, () => done(false))
      s.once('connect', () => done(true))
      s.once('error', () => done(false))
    }))
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

/** Without a token the server would only say "malformed": say what is missing, before connecting. */
function missingJoinToken(): AgentNodeAttestor {
  const err = () =>
    new SpiffeEdgeError('ERR_JOIN_TOKEN_MISSING', 'no join token to attest with', {
      remedy:
        'generate one on the server (spiffe-edge server token generate) and pass it with --join-token or agent.join_token',
    })
  return {
    kind: 'NodeAttestor',
    name: 'join_token',
    payload: async () => {
      throw err()
    },
    respond: async () => {
      throw err()
    },
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

interface NodeIdentity {
  readonly attestor: AgentNodeAttestor
  /** The key manager for the agent SVID key (the TPM's, for TPM attestation). */
  readonly keyManager: KeyManager
  /** False while the agent's TPM is unreachable (TPM attestation only). */
  readonly tpmHealthy?: () => boolean
  close(): Promise<void>
}

async function nodeIdentity(config: AgentConfig): Promise<NodeIdentity> {
  const { name, data } = config.nodeAttestor
  const softwareKeys = (): KeyManager =>
    config.keyManager.kind === 'disk'
      ? new DiskKeyManager(config.keyManager.directory)
      : new MemoryKeyManager()
  if (name === 'join_token') {
    if (Object.keys(data).length > 0)
      throw new ConfigError('plugins.NodeAttestor.join_token', ['takes no settings'])
    // Without a token, attestation fails with a clear error; a restart with saved state needs none.
    return {
      attestor: config.joinToken ? joinTokenAgentAttestor(config.joinToken) : missingJoinToken(),
      keyManager: softwareKeys(),
      close: async () => undefined,
    }
  }
  if (name === 'tpm') {
    const cfg = parseTpmAgentConfig(data)
    const tpm = await TpmContext.open(cfg.tcti)
    // The agent SVID key lives in the TPM; the attestor certifies whichever key the manager made
    // last, which is the one the CSR (and so the SVID) is for.
    const keys = new TpmKeyManager(tpm, join(config.dataDir, 'tpm-keys'))
    let current: TpmKey | undefined
    const keyManager: KeyManager = {
      async generateKey(id, type) {
        current = (await keys.generateKey(id, type)) as TpmKey
        return current
      },
      async getKey(id) {
        const k = (await keys.getKey(id)) as TpmKey | undefined
        if (k) current ??= k
        return k
      },
      listKeys: () => keys.listKeys(),
      deleteKey: (id) => keys.deleteKey(id),
    }
    const attestor = tpmAgentAttestor({
      tpm,
      dataDir: join(config.dataDir, 'tpm'),
      ekAlgorithm: cfg.ekAlgorithm,
      akAlgorithm: cfg.akAlgorithm,
      persistEk: cfg.persistEk,
      agentKey: () => {
        if (!current) throw new Error('no agent key yet')
        return current
      },
    })
    return {
      attestor,
      keyManager,
      tpmHealthy: () => keys.tpmHealth().healthy,
      close: () => tpm.close(),
    }
  }
  throw new ConfigError('plugins.NodeAttestor', [
    `${name}: unknown node attestor (this agent has: join_token, tpm)`,
  ])
}

function workloadAttestors(config: AgentConfig): WorkloadAttestor[] {
  const out: WorkloadAttestor[] = []
  const problems: string[] = []
  for (const [name, data] of config.workloadAttestors) {
    const d = data as Table
    if (name === 'unix') {
      const unknown = Object.keys(d).filter(
        (k) => k !== 'discover_workload_path' && k !== 'workload_size_limit',
      )
      if (unknown.length)
        problems.push(`plugins.WorkloadAttestor.unix: unknown keys ${unknown.join(', ')}`)
      out.push(
        unixAttestor({
          discoverWorkloadPath: d.discover_workload_path === true,
          ...(typeof d.workload_size_limit === 'number'
            ? { workloadSizeLimit: d.workload_size_limit }
            : {}),
        }),
      )
    } else if (name === 'systemd') {
      if (Object.keys(d).length)
        problems.push('plugins.WorkloadAttestor.systemd: takes no settings')
      out.push(systemdAttestor())
    } else if (name === 'docker') {
      const unknown = Object.keys(d).filter((k) => k !== 'docker_socket_path')
      if (unknown.length)
        problems.push(`plugins.WorkloadAttestor.docker: unknown keys ${unknown.join(', ')}`)
      out.push(
        dockerAttestor(
          typeof d.docker_socket_path === 'string' ? { socketPath: d.docker_socket_path } : {},
        ),
      )
    } else {
      problems.push(
        `plugins.WorkloadAttestor.${name}: unknown workload attestor (unix, systemd, docker)`,
      )
    }
  }
  if (problems.length) throw new ConfigError('plugins.WorkloadAttestor', problems)
  return out
}

export async function startAgent(
  config: AgentConfig,
  opts: { log?: Log } = {},
): Promise<RunningAgent> {
  // One agent per data dir: two would share the state database and the SVID keys.
  const lock = acquireDataDirLock(config.dataDir, 'agent')
  try {
    const agent = await startAgentLocked(config, opts)
    const close = async () => {
      try {
        await agent.close()
      } finally {
        lock.release()
      }
    }
    return { ...agent, close, [Symbol.asyncDispose]: close }
  } catch (err) {
    lock.release()
    throw err
  }
}

async function startAgentLocked(config: AgentConfig, opts: { log?: Log }): Promise<RunningAgent> {
  const log = opts.log ?? jsonLogger(config.logLevel, 'agent')
  const td = TrustDomain.parse(config.trustDomain)
  const attestors = workloadAttestors(config)
  await checkSocketFree(config.socketPath)
  const identity = await nodeIdentity(config)
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
    } catch (err) {
      storage.close()
      throw err
    }
  } catch (err) {
    await identity.close()
    throw err
  }
  const client = new GrpcNodeClient({ address: config.serverAddress, trustDomain: td, bundle })
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
    log,
  })
  try {
    await manager.start()
  } catch (err) {
    client.close()
    storage.close()
    await identity.close()
    throw fatalError ?? err
  }
  const api = await startWorkloadApi({
    socketPath: config.socketPath,
    source: manager,
    attestors,
    trustDomain: td,
    log,
    // An expired agent SVID means nothing new can be issued: report it like SPIRE does.
    ready: () => manager.health().ready && (identity.tpmHealthy?.() ?? true),
  })
  log('info', 'agent started', {
    agent: manager.agentId,
    socket: config.socketPath,
    server: config.serverAddress,
  })
  let closing: Promise<void> | undefined
  const close = () => {
    closing ??= (async () => {
      await api.close()
      await manager.stop()
      client.close()
      storage.close()
      await identity.close()
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
