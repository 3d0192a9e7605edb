import { isIP } from 'node:net'
import { dirname, join, resolve } from 'node:path'
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
import { DEFAULT_ADMIN_SOCKET } from '../common/socket-dir.js'
import { type TelemetryConfig, telemetryConfig } from '../common/telemetry-config.js'
import { type FederationConfig, federationConfig } from './federation/config.js'

export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096'
const KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096']

export interface ServerConfig {
  readonly trustDomain: string
  readonly bindAddress: string
  readonly bindPort: number
  readonly dataDir: string
  /**
   * The SQLite datastore file (`[plugins.DataStore.sql] connection_string`, SPIRE's shape);
   * <data_dir>/datastore.sqlite3 by default. Replicas name one file (each its own data_dir).
   */
  readonly datastorePath: string
  /** server.admin_socket; DEFAULT_ADMIN_SOCKET (absolute, shared with the CLI) when unset. */
  readonly adminSocket: string
  /** A group whose members may use the admin socket besides root; undefined: root only. */
  readonly adminSocketGroup: string | undefined
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error'
  /** log_level, log_format, log_file (logLevel above is log.level, kept for callers). */
  readonly log: LogConfig
  /** SPIRE's [health_checks] HTTP listener; undefined unless listener_enabled. */
  readonly healthChecks?: HealthChecksConfig | undefined
  /** SPIRE's [telemetry.Prometheus] /metrics listener; undefined unless configured. */
  readonly telemetry?: TelemetryConfig | undefined
  readonly caTtlSeconds: number
  readonly caKeyType: KeyType
  readonly defaultX509SvidTtlSeconds: number
  readonly defaultJwtSvidTtlSeconds: number
  /**
   * SPIRE's jwt_issuer: the `iss` claim of every JWT-SVID, so an OIDC relying party can match the
   * token to the discovery document. Undefined: no `iss` (as before, and as SPIRE without it).
   */
  readonly jwtIssuer?: string | undefined
  /** Agent SVID lifetime (SPIRE: agent_ttl, defaults to the X509-SVID TTL). */
  readonly agentTtlSeconds: number
  readonly upstream:
    | { readonly certFile: string; readonly keyFile: string; readonly bundleFile: string }
    | undefined
  readonly keyManager: KeyManagerConfig
  /** Node attestor plugins by name, with their raw plugin_data (each plugin validates its own). */
  readonly nodeAttestors: ReadonlyMap<string, Table>
  /** Attestations per second per source address (SPIRE: 1). */
  readonly attestRatePerSecond: number
  /** The config file's folder: plugin settings resolve relative paths against it. */
  readonly configDir: string
  /** The node API over MQTT v5 beside gRPC (`[server.mqtt]`); undefined: gRPC only. */
  readonly mqtt: ServerMqttConfig | undefined
  /** [server.federation]: our bundle endpoint and the trust domains we federate with. */
  readonly federation?: FederationConfig
}

export interface ServerMqttConfig extends MqttSettings {
  readonly url: string
  /** The $share group every replica subscribes with. */
  readonly sharedGroup: string
  /** Unique per replica; default spiffe-edge-server-<random>. */
  readonly clientId: string | undefined
  /**
   * Mosquitto's dynamic security admin (`dynsec_admin_username` + `dynsec_admin_password_file`):
   * the server gives each attested agent its own broker client. Undefined: no broker authorization.
   */
  readonly dynsec: { readonly username: string; readonly passwordFile: string } | undefined
}

/** Flags that override the file (so scripts can start a server in a temp dir in one line). */
export interface ServerOverrides {
  readonly dataDir?: string
  readonly trustDomain?: string
  readonly bindAddress?: string
  readonly bindPort?: number
  readonly adminSocket?: string
  /** Manufacturer CA bundle for the TPM attestor (what `sim tpm start` prints as ek_ca_bundle). */
  readonly tpmEkCa?: string
}

const SERVER_KEYS = [
  'trust_domain',
  'bind_address',
  'bind_port',
  'data_dir',
  'admin_socket',
  'admin_socket_group',
  'log_level',
  'log_format',
  'log_file',
  'ca_ttl',
  'ca_key_type',
  'default_x509_svid_ttl',
  'default_jwt_svid_ttl',
  'jwt_issuer',
  'agent_ttl',
  'attest_rate_per_second',
] as const

/** Parses and validates a server config; every problem is reported in one ERR_CONFIG. */
export function parseServerConfig(
  text: string,
  source: string,
  overrides: ServerOverrides = {},
): ServerConfig {
  const {
    doc,
    r,
    main: s,
  } = openConfig(text, source, 'server', [...SERVER_KEYS, 'upstream', 'mqtt', 'federation'])
  const trustDomain = overrides.trustDomain ?? r.string(s, 'trust_domain', 'server') ?? ''
  const dataDir = overrides.dataDir
    ? resolve(overrides.dataDir)
    : r.path(s, 'data_dir', 'server', './data')!
  const adminSocket = overrides.adminSocket
    ? resolve(overrides.adminSocket)
    : s?.admin_socket === undefined
      ? DEFAULT_ADMIN_SOCKET
      : r.path(s, 'admin_socket', 'server')!
  const x509Ttl = r.duration(s, 'default_x509_svid_ttl', 'server', 3600)
  const up = r.table(s ?? {}, 'upstream', 'server.upstream')
  r.known(up, ['cert_file', 'key_file', 'bundle_file'], 'server.upstream')
  const upstream = up
    ? {
        certFile: r.path(up, 'cert_file', 'server.upstream') ?? '',
        keyFile: r.path(up, 'key_file', 'server.upstream') ?? '',
        bundleFile: r.path(up, 'bundle_file', 'server.upstream') ?? '',
      }
    : undefined

  const mq = r.table(s ?? {}, 'mqtt', 'server.mqtt')
  r.known(
    mq,
    [
      ...MQTT_KEYS,
      'url',
      'shared_group',
      'client_id',
      'dynsec_admin_username',
      'dynsec_admin_password_file',
    ],
    'server.mqtt',
  )
  const mqtt: ServerMqttConfig | undefined = mq
    ? {
        ...mqttSettings(r, mq, 'server.mqtt'),
        url: r.string(mq, 'url', 'server.mqtt') ?? '',
        sharedGroup: r.string(mq, 'shared_group', 'server.mqtt', 'spiffe-edge-server')!,
        clientId: r.optionalString(mq, 'client_id', 'server.mqtt'),
        dynsec:
          mq.dynsec_admin_username === undefined && mq.dynsec_admin_password_file === undefined
            ? undefined
            : {
                username: r.string(mq, 'dynsec_admin_username', 'server.mqtt') ?? '',
                passwordFile: r.path(mq, 'dynsec_admin_password_file', 'server.mqtt') ?? '',
              },
      }
    : undefined
  if (mqtt && !isMqttUrl(mqtt.url))
    r.problems.push(`server.mqtt.url: '${mqtt.url}' is not mqtts://host:port or mqtt://host:port`)
  if (mqtt && !/^[A-Za-z0-9._-]{1,64}$/.test(mqtt.sharedGroup))
    r.problems.push('server.mqtt.shared_group: letters, digits, . _ - only')
  if (mqtt?.clientId !== undefined && !/^[A-Za-z0-9._-]{1,64}$/.test(mqtt.clientId))
    r.problems.push('server.mqtt.client_id: letters, digits, . _ - only')

  const plugins = r.table(doc, 'plugins', 'plugins')
  r.known(plugins, ['NodeAttestor', 'KeyManager', 'DataStore'], 'plugins')
  const datastorePath = datastoreConfig(r, plugins, dataDir)
  const keyManager = keyManagerConfig(r, plugins, dataDir, dirname(resolve(source)))
  const na = r.table(plugins ?? {}, 'NodeAttestor', 'plugins.NodeAttestor')
  const nodeAttestors = new Map<string, Table>()
  for (const [name, value] of Object.entries(na ?? { join_token: {} })) {
    const t = r.table({ [name]: value }, name, `plugins.NodeAttestor.${name}`)
    if (t) nodeAttestors.set(name, t)
  }
  if (overrides.tpmEkCa !== undefined) {
    const tpm = nodeAttestors.get('tpm')
    if (!tpm) r.problems.push('--tpm-ek-ca: the config has no [plugins.NodeAttestor.tpm]')
    else nodeAttestors.set('tpm', { ...tpm, ek_ca_bundle: resolve(overrides.tpmEkCa) })
  }
  if (nodeAttestors.size === 0) r.problems.push('plugins.NodeAttestor: configure at least one')

  const log = r.log(s, 'server')
  const config: ServerConfig = {
    trustDomain,
    bindAddress: overrides.bindAddress ?? r.string(s, 'bind_address', 'server', '127.0.0.1')!,
    bindPort: overrides.bindPort ?? r.int(s, 'bind_port', 'server', 8081, 0, 65535),
    dataDir,
    datastorePath,
    adminSocket,
    adminSocketGroup: r.optionalString(s, 'admin_socket_group', 'server'),
    logLevel: log.level,
    log,
    healthChecks: healthChecksConfig(r, doc),
    telemetry: telemetryConfig(r, doc),
    caTtlSeconds: r.duration(s, 'ca_ttl', 'server', 86400),
    caKeyType: r.oneOf(s, 'ca_key_type', 'server', KEY_TYPES, 'ec-p256'),
    defaultX509SvidTtlSeconds: x509Ttl,
    defaultJwtSvidTtlSeconds: r.duration(s, 'default_jwt_svid_ttl', 'server', 300),
    jwtIssuer: r.optionalString(s, 'jwt_issuer', 'server'),
    agentTtlSeconds: r.duration(s, 'agent_ttl', 'server', x509Ttl),
    upstream,
    keyManager,
    nodeAttestors,
    attestRatePerSecond: r.int(s, 'attest_rate_per_second', 'server', 1, 1, 10_000),
    configDir: dirname(resolve(source)),
    mqtt,
    federation: federationConfig(r, s, trustDomain),
  }
  if (config.defaultX509SvidTtlSeconds >= config.caTtlSeconds) {
    r.problems.push('server.default_x509_svid_ttl: must be shorter than server.ca_ttl')
  }
  checkTrustDomain(r, config.trustDomain, 'server.trust_domain')
  if (config.jwtIssuer !== undefined) {
    const problem = jwtIssuerProblem(config.jwtIssuer)
    if (problem) r.problems.push(`server.jwt_issuer: ${problem}`)
  }
  // grpc-js reports a bad host only as a generic bind failure; name the setting instead.
  if (isIP(config.bindAddress) === 0 && config.bindAddress !== 'localhost') {
    r.problems.push(
      `server.bind_address: '${config.bindAddress}' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1 or ::)`,
    )
  }
  r.done(source)
  return config
}

/**
 * `[plugins.DataStore.sql]`: database_type "sqlite3" (the only one) and connection_string, a file
 * path (relative to the config file). A `file:` URI is refused: its options could turn off what
 * the datastore relies on (WAL, the busy timeout, secure_delete).
 */
function datastoreConfig(r: ConfigReader, plugins: Table | undefined, dataDir: string): string {
  const fallback = join(dataDir, 'datastore.sqlite3')
  const ds = r.table(plugins ?? {}, 'DataStore', 'plugins.DataStore')
  if (!ds) return fallback
  const names = Object.keys(ds)
  if (names.length !== 1 || names[0] !== 'sql') {
    r.problems.push('plugins.DataStore: only [plugins.DataStore.sql] exists')
    return fallback
  }
  const sql = r.table(ds, 'sql', 'plugins.DataStore.sql') ?? {}
  r.known(sql, ['database_type', 'connection_string'], 'plugins.DataStore.sql')
  r.oneOf(sql, 'database_type', 'plugins.DataStore.sql', ['sqlite3'] as const, 'sqlite3')
  const cs = r.optionalString(sql, 'connection_string', 'plugins.DataStore.sql')
  if (cs === undefined) return fallback
  if (cs.startsWith('file:') || cs.includes('?')) {
    r.problems.push(
      'plugins.DataStore.sql.connection_string: a file path, not a file: URI or options',
    )
    return fallback
  }
  return r.path(sql, 'connection_string', 'plugins.DataStore.sql') ?? fallback
}

/**
 * OIDC Discovery 1.0 §2/§4.3: the issuer is an https URL without query or fragment, and relying
 * parties compare it byte for byte with the discovery document's, so a malformed value would only
 * surface as every token being refused. http is accepted for loopback hosts only (local testing).
 */
export function jwtIssuerProblem(issuer: string): string | undefined {
  let u: URL
  try {
    u = new URL(issuer)
  } catch {
    return `'${issuer}' is not a URL (use e.g. https://oidc.example.org)`
  }
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(u.hostname)
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && loopback)) {
    return `'${issuer}' must use https (http only for localhost/127.0.0.1/[::1])`
  }
  if (u.search !== '' || u.hash !== '' || issuer.includes('?') || issuer.includes('#')) {
    return `'${issuer}' must not have a query or fragment`
  }
  if (u.username !== '' || u.password !== '') return `'${issuer}' must not carry credentials`
  return undefined
}

export function loadServerConfig(file: string, overrides: ServerOverrides = {}): ServerConfig {
  return parseServerConfig(readConfigFile(file), file, overrides)
}
