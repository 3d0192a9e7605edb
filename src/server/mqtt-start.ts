/**
 * Starts the MQTT listener from `[server.mqtt]`: reads the broker files, loads (or creates once)
 * the server's encryption key `<data_dir>/mqtt-encryption.key`, and connects.
 */
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { ConfigError } from '../common/config.js'
import { readMqttFiles } from '../common/mqtt-config.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import { MosquittoDynSec } from '../transport/mqtt/dynsec.js'
import { readPasswordFile } from '../transport/mqtt/dynsec-client.js'
import type { ServerMqttConfig } from './config.js'
import {
  loadOrCreateEncryptionKey,
  type NodeMqttOptions,
  type NodeMqttServer,
  startNodeMqttServer,
} from './mqtt.js'
import type { NodeApi, ServerIdentity } from './node-api.js'

export async function startMqttListener(
  api: NodeApi,
  cfg: ServerMqttConfig,
  o: {
    dataDir: string
    replay: NodeMqttOptions['replay']
    brokerAccess: BrokerAccess | undefined
    bundle: () => TrustBundle
    identity: () => ServerIdentity
    log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void
  },
): Promise<NodeMqttServer> {
  let files: ReturnType<typeof readMqttFiles>
  try {
    files = readMqttFiles(cfg)
  } catch (err) {
    throw new ConfigError('server.mqtt', [(err as Error).message])
  }
  const encryptionKey = await loadOrCreateEncryptionKey(join(o.dataDir, 'mqtt-encryption.key'))
  return startNodeMqttServer(api, {
    url: cfg.url,
    topicPrefix: cfg.topicPrefix,
    sharedGroup: cfg.sharedGroup,
    clientId: cfg.clientId ?? `spiffe-edge-server-${randomBytes(6).toString('hex')}`,
    username: cfg.username,
    password: files.password,
    ca: files.ca,
    cert: files.cert,
    key: files.key,
    encryptionKey,
    replay: o.replay,
    brokerAccess: o.brokerAccess,
    bundle: o.bundle,
    identity: o.identity,
    log: o.log,
  })
}

/**
 * `[server.mqtt] dynsec_admin_*`: the broker's own authorization (Mosquitto dynamic security),
 * connected and its roles checked before the listener starts; undefined without those keys.
 */
export async function dynsecFromConfig(
  cfg: ServerMqttConfig | undefined,
): Promise<BrokerAccess | undefined> {
  if (!cfg?.dynsec) return undefined
  let password: string
  let ca: Buffer | undefined
  try {
    password = readPasswordFile(cfg.dynsec.passwordFile)
    ca = readMqttFiles(cfg).ca
  } catch (err) {
    throw new ConfigError('server.mqtt', [`dynsec_admin_password_file: ${(err as Error).message}`])
  }
  const access = await MosquittoDynSec.connect({
    url: cfg.url,
    username: cfg.dynsec.username,
    password,
    ...(ca ? { ca } : {}),
    topicPrefix: cfg.topicPrefix,
    sharedGroup: cfg.sharedGroup,
  })
  try {
    await access.ensureRoles()
  } catch (err) {
    await access.close()
    throw err
  }
  return access
}
