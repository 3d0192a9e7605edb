/**
 * Picks the node API transport from server_address: host:port → gRPC, mqtt(s)://broker:port →
 * MQTT v5. Over MQTT the broker credentials the server granted at attestation are kept in
 * <data_dir>/mqtt-credentials.json (0600), so a restarted agent reconnects on its own topics.
 * The transport's code loads on first use (lazy-node-client.ts); its settings and files are read
 * and checked here, at start, so a bad config still fails the start.
 */
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError } from '../common/config.js'
import { readMqttFiles } from '../common/mqtt-config.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { BrokerCredentials } from '../transport/mqtt/broker-access.js'
import type { NodeClient } from '../transport/node-client.js'
import type { AgentConfig } from './config.js'
import { LazyNodeClient } from './lazy-node-client.js'

function readGranted(file: string): BrokerCredentials | undefined {
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
    if (typeof j.username === 'string' && typeof j.password === 'string')
      return { username: j.username, password: j.password }
  } catch {
    // none yet, or unreadable: the bootstrap credentials serve until the next attestation
  }
  return undefined
}

function writeGranted(file: string, c: BrokerCredentials): void {
  const tmp = `${file}.tmp`
  rmSync(tmp, { force: true })
  writeFileSync(tmp, JSON.stringify(c), { mode: 0o600, flag: 'wx' })
  chmodSync(tmp, 0o600)
  renameSync(tmp, file)
}

export function nodeClient(
  config: AgentConfig,
  td: TrustDomain,
  bundle: TrustBundle | 'insecure',
): NodeClient {
  const m = config.mqtt
  if (!m) {
    return new LazyNodeClient(async () => {
      const { GrpcNodeClient } = await import('../transport/grpc-client.js')
      return new GrpcNodeClient({ address: config.serverAddress, trustDomain: td, bundle })
    }, bundle)
  }
  let files: ReturnType<typeof readMqttFiles>
  try {
    files = readMqttFiles(m)
  } catch (err) {
    throw new ConfigError('agent.mqtt', [(err as Error).message])
  }
  const credentialsFile = join(config.dataDir, 'mqtt-credentials.json')
  const granted = readGranted(credentialsFile)
  return new LazyNodeClient(async () => {
    const { MqttNodeClient } = await import('../transport/mqtt/client.js')
    return new MqttNodeClient({
      url: config.serverAddress,
      trustDomain: td,
      bundle,
      topicPrefix: m.topicPrefix,
      ca: files.ca,
      username: m.username,
      password: files.password,
      cert: files.cert,
      key: files.key,
      granted,
      onGranted: (c) => writeGranted(credentialsFile, c),
    })
  }, bundle)
}
