/**
 * The server's MQTT listener (with the broker's own authorization) and its health and metrics
 * listeners, started for server.ts; each pushes its close onto the server's cleanups.
 */
import { startHealthListener } from '../common/health-http.js'
import type { Log } from '../common/log.js'
import { startMetricsListener } from '../common/telemetry.js'
import type { TrustBundle } from '../spiffe/bundle.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import type { ServerConfig } from './config.js'
import type { Datastore } from './datastore/types.js'
import type { ServerMetrics } from './metrics.js'
import type { NodeMqttServer } from './mqtt.js'
import { dynsecFromConfig, startMqttListener } from './mqtt-start.js'
import type { NodeApi, ServerIdentity } from './node-api.js'

type Cleanups = (() => Promise<void> | void)[]

/** `[server.mqtt]`: broker authorization (given, or from dynsec_admin_*) and the listener. */
export async function startMqtt(
  config: ServerConfig,
  given: BrokerAccess | undefined,
  cleanups: Cleanups,
  o: {
    api: NodeApi
    datastore: Datastore
    bundle: () => TrustBundle
    identity: () => ServerIdentity
    log: Log
  },
): Promise<{ brokerAccess: BrokerAccess | undefined; mqttServer: NodeMqttServer | undefined }> {
  const brokerAccess = given ?? (await dynsecFromConfig(config.mqtt))
  if (brokerAccess) cleanups.push(() => brokerAccess.close())
  const mqttServer = config.mqtt
    ? await startMqttListener(o.api, config.mqtt, {
        dataDir: config.dataDir,
        replay: o.datastore,
        brokerAccess,
        bundle: o.bundle,
        identity: o.identity,
        log: o.log,
      })
    : undefined
  if (mqttServer) cleanups.push(() => mqttServer.close())
  return { brokerAccess, mqttServer }
}

/** The datastore health tick, and the health and metrics listeners when configured. */
export async function startHealthAndMetrics(
  config: ServerConfig,
  cleanups: Cleanups,
  o: {
    datastore: Datastore
    mqttServer: NodeMqttServer | undefined
    metrics: ServerMetrics | undefined
    tickMs: number
    log: Log
  },
): Promise<void> {
  const { datastore, mqttServer, metrics, log } = o
  // Readiness from the tick's datastore check (the listener answers from memory, never waits on I/O).
  let datastoreOk = true
  const healthTick = setInterval(() => {
    void datastore.healthCheck().then(
      (h) => {
        datastoreOk = h.ok
      },
      () => {
        datastoreOk = false
      },
    )
  }, o.tickMs)
  healthTick.unref()
  cleanups.push(() => clearInterval(healthTick))
  if (config.healthChecks) {
    const health = await startHealthListener(config.healthChecks, {
      live: () => ({ ok: true }),
      ready: () => {
        // A configured MQTT listener whose broker is down: not ready (it keeps reconnecting).
        const mqttOk = mqttServer ? mqttServer.connected() : true
        return {
          ok: datastoreOk && mqttOk,
          details: {
            datastore: datastoreOk ? 'ok' : 'failing',
            ...(mqttServer ? { mqtt: mqttOk ? 'connected' : 'disconnected' } : {}),
          },
        }
      },
    })
    cleanups.push(() => health.close())
    log('info', 'health checks listening', {
      address: `${config.healthChecks.bindAddress}:${health.port}`,
    })
  }
  if (config.telemetry && metrics) {
    metrics.watchDatastore(() => datastoreOk)
    const listener = await startMetricsListener(config.telemetry, metrics.registry)
    cleanups.push(() => listener.close())
    log('info', 'metrics listening', {
      address: `${config.telemetry.host}:${listener.port}`,
    })
  }
}
