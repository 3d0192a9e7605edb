import { dirname, resolve } from 'node:path'
import {
  type ConfigReader,
  checkTrustDomain,
  type KeyManagerConfig,
  keyManagerConfig,
  openConfig,
  readConfigFile,
  type Table,
} from '../common/config.js'
import { type HealthChecksConfig, healthChecksConfig } from '../common/health-http.js'
import type { LogConfig } from '../common/log.js'
import { isMqttUrl, MQTT_KEYS, type MqttSettings, mqttSettings } from '../common/mqtt-config.js'
import { type TelemetryConfig, telemetryConfig } from '../common/telemetry-config.js'
import type { KeyType } from '../keymanager/types.js'
import { DEFAULT_SDS_NAMES, type SdsNames } from './workload-api/sds-resources.js'

/** Where SPIRE users expect it (SPIRE: /tmp/spire-agent/public/api.sock); `api` commands look here. */
export const DEFAULT_AGENT_SOCKET = '/tmp/spiffe-edge-agent/public/api.sock'

const KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096']

export interface AgentConfig {
  readonly trustDomain: string
  /** host:port of the server's node API (gRPC), or mqtts://broker:port (MQTT v5). */
  readonly serverAddress: string
  /** `[agent.mqtt]`, set when server_address is an mqtt(s):// URL. */
  readonly mqtt: MqttSettings | undefined
  readonly dataDir: string
  readonly socketPath: string
  /** PEM bundle to trust at first contact; undefined with insecureBootstrap. */
  readonly trustBundlePath: string | undefined
  readonly insecureBootstrap: boolean
  readonly joinToken: string | undefined
  readonly workloadKeyType: KeyType
  readonly syncIntervalSeconds: number
  /**
   * SPIRE's availability_target: SVIDs are renewed while they still have this long to live, so
   * workloads survive a server outage of this length; 0 means half-life rotation.
   */
  readonly availabilityTargetSeconds: number
  readonly x509SvidCacheMaxSize: number
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error'
  /** log_level, log_format, log_file (logLevel above is log.level, kept for callers). */
  readonly log: LogConfig
  /** SPIRE's [health_checks] HTTP listener; undefined unless listener_enabled. */
  readonly healthChecks?: HealthChecksConfig | undefined
  /** SPIRE's [telemetry.Prometheus] /metrics listener; undefined unless configured. */
  readonly telemetry?: TelemetryConfig | undefined
  readonly keyManager: KeyManagerConfig
  readonly nodeAttestor: { readonly name: string; readonly data: Table }
  readonly workloadAttestors: ReadonlyMap<string, Table>
  /** [agent.sds]: SPIRE's Envoy SDS resource names. */
  readonly sds: SdsNames
  /**
   * [agent.cache] seal_pcrs: sha256 PCRs the TPM-sealed SVID cache is bound to (empty: no PCR
   * policy). Only with the tpm node attestor.
   */
  readonly cacheSealPcrs: readonly number[]
}

export interface AgentOverrides {
  readonly dataDir?: string
  readonly socketPath?: string
  readonly serverAddress?: string
  readonly joinToken?: string
  readonly trustBundlePath?: string
  readonly insecureBootstrap?: boolean
  readonly trustDomain?: string
  /** TPM to attest with (overrides plugins.NodeAttestor.tpm.tcti). */
  readonly tcti?: string
}

const AGENT_KEYS = [
  'trust_domain',
  'server_address',
  'server_port',
  'data_dir',
  'socket_path',
  'trust_bundle_path',
  'insecure_bootstrap',
  'join_token',
  'workload_x509_svid_key_type',
  'sync_interval',
  'availability_target',
  'x509_svid_cache_max_size',
  'log_level',
  'log_format',
  'log_file',
  'mqtt',
  'sds',
  'cache',
] as const

/** [agent.cache]: seal_pcrs = [0, 2, 4, 7] (sha256 bank; PCR indices 0-23, at most 24). */
function cacheSealPcrs(r: ConfigReader, a: Table | undefined, attestor: string): number[] {
  const t = r.table(a ?? {}, 'cache', 'agent.cache')
  r.known(t, ['seal_pcrs'], 'agent.cache')
  const v = t?.seal_pcrs
  if (v === undefined) return []
  if (
    !Array.isArray(v) ||
    v.length > 24 ||
    !v.every((p) => Number.isInteger(p) && (p as number) >= 0 && (p as number) <= 23)
  ) {
    r.problems.push('agent.cache.seal_pcrs: a list of PCR indices 0-23, e.g. [0, 2, 4, 7]')
    return []
  }
  if (v.length > 0 && attestor !== 'tpm') {
    r.problems.push('agent.cache.seal_pcrs: needs the tpm node attestor (the TPM seals the cache)')
  }
  return [...new Set(v as number[])].sort((x, y) => x - y)
}

/** [agent.sds] with SPIRE's key names and defaults. */
function sdsConfig(r: ConfigReader, a: Table | undefined): SdsNames {
  const t = r.table(a ?? {}, 'sds', 'agent.sds')
  const keys = [
    'default_svid_name',
    'default_bundle_name',
    'default_all_bundles_name',
    'disable_spiffe_cert_validation',
  ]
  r.known(t, keys, 'agent.sds')
  const d = DEFAULT_SDS_NAMES
  const names: SdsNames = {
    defaultSvidName: r.string(t, 'default_svid_name', 'agent.sds', d.defaultSvidName)!,
    defaultBundleName: r.string(t, 'default_bundle_name', 'agent.sds', d.defaultBundleName)!,
    defaultAllBundlesName: r.string(
      t,
      'default_all_bundles_name',
      'agent.sds',
      d.defaultAllBundlesName,
    )!,
    disableSpiffeCertValidation: r.bool(
      t,
      'disable_spiffe_cert_validation',
      'agent.sds',
      d.disableSpiffeCertValidation,
    ),
  }
  // One name for two kinds of secret would make one of them unreachable.
  const given = [names.defaultSvidName, names.defaultBundleName, names.defaultAllBundlesName]
  if (new Set(given).size !== given.length) {
    r.problems.push(
      'agent.sds: default_svid_name, default_bundle_name and default_all_bundles_name must differ',
    )
  }
  if (given.some((n) => n.startsWith('spiffe://'))) {
    r.problems.push(
      'agent.sds: a default name may not start with spiffe:// (those name SVIDs and bundles)',
    )
  }
  return names
}

/** Parses and validates an agent config (SPIRE's key names); every problem in one ERR_CONFIG. */
export function parseAgentConfig(
  text: string,
  source: string,
  o: AgentOverrides = {},
): AgentConfig {
  const { doc, r, main: a } = openConfig(text, source, 'agent', AGENT_KEYS)
  const dataDir = o.dataDir ? resolve(o.dataDir) : r.path(a, 'data_dir', 'agent', './data/agent')!
  const socketPath = o.socketPath
    ? resolve(o.socketPath)
    : a?.socket_path === undefined
      ? DEFAULT_AGENT_SOCKET
      : r.path(a, 'socket_path', 'agent')!
  let serverAddress = o.serverAddress ?? r.string(a, 'server_address', 'agent', '127.0.0.1')!
  const mq = r.table(a ?? {}, 'mqtt', 'agent.mqtt')
  r.known(mq, MQTT_KEYS, 'agent.mqtt')
  const overMqtt = /^mqtts?:/.test(serverAddress)
  const mqtt = overMqtt ? mqttSettings(r, mq, 'agent.mqtt') : undefined
  if (overMqtt && !isMqttUrl(serverAddress))
    r.problems.push(`agent.server_address: '${serverAddress}' is not mqtts://host:port`)
  if (mq && !overMqtt)
    r.problems.push('agent.mqtt: only used when server_address is an mqtt(s):// URL')
  if (o.serverAddress === undefined && !overMqtt && !serverAddress.includes(':')) {
    serverAddress = `${serverAddress}:${r.int(a, 'server_port', 'agent', 8081, 1, 65535)}`
  }
  const insecureBootstrap = o.insecureBootstrap ?? r.bool(a, 'insecure_bootstrap', 'agent', false)
  const trustBundlePath = o.trustBundlePath
    ? resolve(o.trustBundlePath)
    : a?.trust_bundle_path === undefined
      ? undefined
      : r.path(a, 'trust_bundle_path', 'agent')
  if (!insecureBootstrap && trustBundlePath === undefined) {
    r.problems.push('agent: set trust_bundle_path (or insecure_bootstrap = true for a demo)')
  }
  if (insecureBootstrap && trustBundlePath !== undefined && o.insecureBootstrap === undefined) {
    r.problems.push('agent: trust_bundle_path and insecure_bootstrap exclude each other')
  }

  const plugins = r.table(doc, 'plugins', 'plugins')
  r.known(plugins, ['NodeAttestor', 'KeyManager', 'WorkloadAttestor'], 'plugins')
  const na = r.table(plugins ?? {}, 'NodeAttestor', 'plugins.NodeAttestor') ?? { join_token: {} }
  const naNames = Object.keys(na)
  if (naNames.length !== 1) r.problems.push('plugins.NodeAttestor: configure exactly one')
  const naName = naNames[0] ?? 'join_token'
  let naData = r.table(na, naName, `plugins.NodeAttestor.${naName}`) ?? {}
  if (o.tcti !== undefined) {
    if (naName !== 'tpm') r.problems.push('--tcti: the config has no [plugins.NodeAttestor.tpm]')
    else naData = { ...naData, tcti: o.tcti }
  }

  const keyManager = keyManagerConfig(r, plugins, dataDir, dirname(resolve(source)))

  const wa = r.table(plugins ?? {}, 'WorkloadAttestor', 'plugins.WorkloadAttestor') ?? { unix: {} }
  const workloadAttestors = new Map<string, Table>()
  for (const name of Object.keys(wa)) {
    const t = r.table(wa, name, `plugins.WorkloadAttestor.${name}`)
    if (t) workloadAttestors.set(name, t)
  }
  if (workloadAttestors.size === 0)
    r.problems.push('plugins.WorkloadAttestor: configure at least one')

  const log = r.log(a, 'agent')
  const config: AgentConfig = {
    trustDomain: o.trustDomain ?? r.string(a, 'trust_domain', 'agent') ?? '',
    serverAddress,
    mqtt,
    dataDir,
    socketPath,
    trustBundlePath,
    insecureBootstrap,
    joinToken: o.joinToken ?? r.optionalString(a, 'join_token', 'agent'),
    workloadKeyType: r.oneOf(a, 'workload_x509_svid_key_type', 'agent', KEY_TYPES, 'ec-p256'),
    syncIntervalSeconds: r.duration(a, 'sync_interval', 'agent', 5),
    availabilityTargetSeconds: r.duration(a, 'availability_target', 'agent', 0),
    x509SvidCacheMaxSize: r.int(a, 'x509_svid_cache_max_size', 'agent', 1000, 1, 1_000_000),
    logLevel: log.level,
    log,
    healthChecks: healthChecksConfig(r, doc),
    telemetry: telemetryConfig(r, doc),
    keyManager,
    nodeAttestor: { name: naName, data: naData },
    workloadAttestors,
    sds: sdsConfig(r, a),
    cacheSealPcrs: cacheSealPcrs(r, a, naName),
  }
  checkTrustDomain(r, config.trustDomain, 'agent.trust_domain')
  r.done(source)
  return config
}

export function loadAgentConfig(file: string, o: AgentOverrides = {}): AgentConfig {
  return parseAgentConfig(readConfigFile(file), file, o)
}
