/**
 * The agent's plugin catalog: node attestors (with the key manager their SVID key lives in) and
 * workload attestors, by config name, so a new kind is one entry and an unknown name is told what
 * exists.
 */
import { join } from 'node:path'
import { joinTokenAgentAttestor } from '../attestors/join-token/agent.js'
import type { AgentNodeAttestor } from '../attestors/types.js'
import { ConfigError, type Table } from '../common/config.js'
import { SpiffeEdgeError } from '../errors.js'
import {
  buildKeyManager,
  diskPlugin,
  type KeyManagerFactory,
  memoryPlugin,
  pkcs11Plugin,
} from '../keymanager/catalog.js'
import { FileSealer } from '../keymanager/file-sealer.js'
import type { CacheSealer } from '../keymanager/sealer.js'
import type { TpmKey } from '../keymanager/tpm.js'
import type { KeyManager } from '../keymanager/types.js'
import { cloudNodeAttestors } from './cloud-plugins.js'
import type { AgentConfig } from './config.js'
import { dockerAttestor } from './workload-api/attestors/docker.js'
import { systemdAttestor } from './workload-api/attestors/systemd.js'
import { unixAttestor } from './workload-api/attestors/unix.js'
import type { WorkloadAttestor } from './workload-api/types.js'

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

export interface NodeIdentity {
  readonly attestor: AgentNodeAttestor
  /** The key manager for the agent SVID key (the TPM's, for TPM attestation). */
  readonly keyManager: KeyManager
  /** False while the agent's TPM is unreachable (TPM attestation only). */
  readonly tpmHealthy?: () => boolean
  /** False while the key manager cannot reach its keys (an HSM token gone). */
  readonly keysHealthy?: () => boolean
  /**
   * What wraps the sealed SVID cache's key: the PKCS#11 token when that is the key manager (any
   * attestor), else the TPM for the tpm attestor; absent, a 0600 key file in the data dir
   * (fileSealer), with a warning at start.
   */
  readonly sealer?: CacheSealer
  close(): Promise<void>
}

/** Where the agent SVID key lives for attestors that do not bring their own (join token). */
export const KEY_MANAGERS: ReadonlyMap<string, KeyManagerFactory> = new Map([
  ['disk', diskPlugin],
  ['memory', memoryPlugin],
  ['pkcs11', pkcs11Plugin],
])

type NodeAttestorFactory = (config: AgentConfig, data: Table) => Promise<NodeIdentity>

/** The agent's node attestors by config name; each brings the key manager its SVID key needs. */
export const NODE_ATTESTORS: ReadonlyMap<string, NodeAttestorFactory> = new Map<
  string,
  NodeAttestorFactory
>([
  [
    'join_token',
    async (config, data) => {
      if (Object.keys(data).length > 0)
        throw new ConfigError('plugins.NodeAttestor.join_token', ['takes no settings'])
      const keys = await buildKeyManager(KEY_MANAGERS, config.keyManager, 'agent')
      // Without a token, attestation fails with a clear error; a restart with saved state needs none.
      return {
        attestor: config.joinToken ? joinTokenAgentAttestor(config.joinToken) : missingJoinToken(),
        keyManager: keys.keyManager,
        ...(keys.healthy ? { keysHealthy: keys.healthy } : {}),
        ...(keys.cacheSealer ? { sealer: keys.cacheSealer } : {}),
        close: async () => keys.close(),
      }
    },
  ],
  [
    'tpm',
    async (config, data) => {
      // Loaded only when configured: the TPM stack (with @peculiar/x509 for EK certificates) is
      // MiBs of RSS a join-token or cloud agent has no use for (bench/agent-modules.ts).
      const [
        { parseTpmAgentConfig, tpmAgentAttestor },
        { TpmKeyManager },
        { TpmPcrSealer },
        { TpmSealer },
        { TpmContext },
        { tpmOptions, tpmWithHsmKey, trackCurrent },
      ] = await Promise.all([
        import('../attestors/tpm/agent.js'),
        import('../keymanager/tpm.js'),
        import('../keymanager/tpm-pcr-sealer.js'),
        import('../keymanager/tpm-sealer.js'),
        import('../tpm/context.js'),
        import('./tpm-hsm.js'),
      ])
      const cfg = parseTpmAgentConfig(data)
      // [plugins.KeyManager.pkcs11] on a TPM agent: the SVID key lives in the token, bound to the
      // quote (tpm-hsm.ts); any other (or no) key manager: the key lives in the TPM, AK-certified.
      if (config.keyManager.name === 'pkcs11') return tpmWithHsmKey(config, cfg)
      const tpm = await TpmContext.open(cfg.tcti)
      // The agent SVID key lives in the TPM; the attestor certifies whichever key the manager made
      // last, which is the one the CSR (and so the SVID) is for.
      const keys = new TpmKeyManager(tpm, join(config.dataDir, 'tpm-keys'))
      const tracked = trackCurrent<TpmKey>(keys)
      const attestor = tpmAgentAttestor({
        ...tpmOptions(config, cfg, tpm),
        agentKey: tracked.current,
      })
      // Attestation follows key generation: the attestor takes over that SRK (one CreatePrimary).
      keys.handOffSrk = (srk) => attestor.adoptSrk(srk)
      return {
        attestor,
        keyManager: tracked.keyManager,
        tpmHealthy: () => keys.tpmHealth().healthy,
        // With seal_pcrs, keys of their own (never the policy-free cache-kek, which stays as is).
        sealer:
          config.cacheSealPcrs.length > 0
            ? new TpmPcrSealer(tpm, join(config.dataDir, 'cache-seal'), config.cacheSealPcrs)
            : new TpmSealer(tpm, join(config.dataDir, 'cache-seal')),
        close: () => tpm.close(),
      }
    },
  ],
  ...cloudNodeAttestors((config) => buildKeyManager(KEY_MANAGERS, config.keyManager, 'agent')),
])

/** The software sealer: for attestors without hardware of their own to wrap the cache key. */
export const fileSealer = (config: AgentConfig): CacheSealer =>
  new FileSealer(join(config.dataDir, 'cache.key'))

/** The configured node attestor from the catalog; an unknown one is refused listing what exists. */
export function nodeIdentity(config: AgentConfig): Promise<NodeIdentity> {
  const { name, data } = config.nodeAttestor
  const factory = NODE_ATTESTORS.get(name)
  if (!factory) {
    throw new ConfigError('plugins.NodeAttestor', [
      `${name}: unknown node attestor (this agent has: ${[...NODE_ATTESTORS.keys()].join(', ')})`,
    ])
  }
  return factory(config, data)
}

type WorkloadAttestorFactory = (d: Table, problems: string[]) => WorkloadAttestor

const unknownKeys = (d: Table, allowed: readonly string[]) =>
  Object.keys(d).filter((k) => !allowed.includes(k))

/** The agent's workload attestors by config name (SPIRE's names and keys). */
export const WORKLOAD_ATTESTORS: ReadonlyMap<string, WorkloadAttestorFactory> = new Map<
  string,
  WorkloadAttestorFactory
>([
  [
    'unix',
    (d, problems) => {
      const unknown = unknownKeys(d, ['discover_workload_path', 'workload_size_limit'])
      if (unknown.length)
        problems.push(`plugins.WorkloadAttestor.unix: unknown keys ${unknown.join(', ')}`)
      return unixAttestor({
        discoverWorkloadPath: d.discover_workload_path === true,
        ...(typeof d.workload_size_limit === 'number'
          ? { workloadSizeLimit: d.workload_size_limit }
          : {}),
      })
    },
  ],
  [
    'systemd',
    (d, problems) => {
      if (Object.keys(d).length)
        problems.push('plugins.WorkloadAttestor.systemd: takes no settings')
      return systemdAttestor()
    },
  ],
  [
    'docker',
    (d, problems) => {
      const unknown = unknownKeys(d, ['docker_socket_path'])
      if (unknown.length)
        problems.push(`plugins.WorkloadAttestor.docker: unknown keys ${unknown.join(', ')}`)
      return dockerAttestor(
        typeof d.docker_socket_path === 'string' ? { socketPath: d.docker_socket_path } : {},
      )
    },
  ],
])

/** Every configured workload attestor; all problems (unknown names, keys) in one ERR_CONFIG. */
export function workloadAttestors(config: AgentConfig): WorkloadAttestor[] {
  const out: WorkloadAttestor[] = []
  const problems: string[] = []
  for (const [name, data] of config.workloadAttestors) {
    const factory = WORKLOAD_ATTESTORS.get(name)
    if (!factory) {
      problems.push(
        `plugins.WorkloadAttestor.${name}: unknown workload attestor (this agent has: ${[...WORKLOAD_ATTESTORS.keys()].join(', ')})`,
      )
      continue
    }
    out.push(factory(data as Table, problems))
  }
  if (problems.length) throw new ConfigError('plugins.WorkloadAttestor', problems)
  return out
}
