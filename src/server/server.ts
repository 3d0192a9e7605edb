/**
 * The server's composition root: datastore, key manager, CA, node attestors, the node API over
 * gRPC, the admin API on its Unix socket, and the timers that rotate keys and prune. Everything is
 * passed in or built here; nothing is reached through module state.
 */
import { createPrivateKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Socket } from 'node:net'
import { ConfigError } from '../common/config.js'
import { acquireDataDirLock } from '../common/datadir-lock.js'
import { type Log, Logger } from '../common/log.js'
import { packageVersion } from '../common/telemetry.js'
import { x509 } from '../common/x509.js'
import { SpiffeEdgeError } from '../errors.js'
import { buildKeyManager } from '../keymanager/catalog.js'
import { DiskKeyManager } from '../keymanager/disk.js'
import { generateSoftwareKeyPair, softwareKey } from '../keymanager/memory.js'
import { type KeyManager, softwareSigner } from '../keymanager/types.js'
import type { PeerCredentials } from '../native/types.js'
import { parsePemCertificates } from '../spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../spiffe/id.js'
import type { BrokerAccess } from '../transport/mqtt/broker-access.js'
import { prepareAdminSocket, startAdminServer } from './admin.js'
import { adminCore } from './admin-core.js'
import { CaManager, type Clock, type UpstreamAuthority } from './ca.js'
import type { ServerConfig } from './config.js'
import {
  moveAside,
  refuseKeysWithoutDatastore,
  refuseTokenKeysWithoutDatastore,
  tightenDataDir,
} from './datadir.js'
import { openSqliteDatastore } from './datastore/sqlite.js'
import type { Datastore } from './datastore/types.js'
import { startFederation } from './federation/index.js'
import { MemoryCertificateProvider, startNodeGrpcServer } from './grpc.js'
import { scrubLiveTokenAliases } from './join-token-alias.js'
import { ServerMetrics } from './metrics.js'
import { NodeApi, type ServerIdentity } from './node-api.js'
import { buildNodeAttestors, KEY_MANAGERS } from './plugins.js'
import { startHealthAndMetrics, startMqtt } from './server-listeners.js'

export interface RunningServer extends AsyncDisposable {
  readonly port: number
  readonly adminSocket: string
  readonly trustDomain: TrustDomain
  readonly ca: CaManager
  readonly datastore: Datastore
  readonly api: NodeApi
  /** The bundle endpoint's port, when [server.federation.bundle_endpoint] is set. */
  readonly bundleEndpointPort?: number
  /** The server's own logger (absent when the caller passed `log`): SIGHUP reopens its file. */
  readonly logger?: Logger
  close(): Promise<void>
}

export interface StartServerOptions {
  readonly clock?: Clock
  readonly log?: Log
  /** Kernel credentials for the admin socket (from the TPM addon's peerCred, when available). */
  readonly peerCred?: ((socket: Socket) => PeerCredentials) | undefined
  /** How often keys rotate and stale rows are pruned (ms). */
  readonly tickMs?: number
  /**
   * Start a new CA from scratch: the datastore and the key directory are moved aside (renamed
   * `*.reset-<time>`), never deleted. Without it, keys without their datastore refuse to start.
   */
  readonly reset?: boolean
  /**
   * Broker authorization for the MQTT listener (Mosquitto dynamic security, ...): attested agents
   * get their own broker client, evicted and banned ones lose it. Without it agents keep the
   * bootstrap credentials. Closed with the server.
   */
  readonly brokerAccess?: BrokerAccess
}

function readUpstream(cfg: NonNullable<ServerConfig['upstream']>): UpstreamAuthority {
  const problems: string[] = []
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8')
    } catch (err) {
      problems.push(`${f}: ${(err as Error).message}`)
      return ''
    }
  }
  const certPem = read(cfg.certFile)
  const keyPem = read(cfg.keyFile)
  const bundlePem = read(cfg.bundleFile)
  if (problems.length) throw new ConfigError('server.upstream', problems)
  const certs = parsePemCertificates(certPem)
  const roots = parsePemCertificates(bundlePem)
  if (certs.length === 0 || roots.length === 0) {
    throw new ConfigError('server.upstream', [
      'cert_file and bundle_file must hold PEM certificates',
    ])
  }
  let signer: ReturnType<typeof softwareSigner>
  try {
    signer = softwareSigner(createPrivateKey(keyPem))
  } catch (err) {
    throw new ConfigError('server.upstream', [`key_file: ${(err as Error).message}`])
  }
  const cert = new x509.X509Certificate(certs[0]!)
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw new ConfigError('server.upstream', ['cert_file: the upstream certificate is not a CA'])
  }
  const certKey = Buffer.from(cert.publicKey.rawData)
  const signerKey = signer.publicKey.export({ type: 'spki', format: 'der' })
  if (!certKey.equals(signerKey)) {
    throw new ConfigError('server.upstream', [
      'key_file: the key is not the one cert_file certifies',
    ])
  }
  return { certificate: certs[0]!, signer, roots, chain: certs.slice(1) }
}

export async function startServer(
  config: ServerConfig,
  opts: StartServerOptions = {},
): Promise<RunningServer> {
  const logger = opts.log ? undefined : new Logger(config.log, 'server')
  const log = opts.log ?? logger!.log
  const clock = opts.clock ?? { now: () => new Date() }
  const trustDomain = TrustDomain.parse(config.trustDomain)
  const cleanups: (() => Promise<void> | void)[] = []
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c()
  }
  // Before anything touches the data dir: a second server on it would share the database and
  // keys, and replace the live admin socket.
  const lock = acquireDataDirLock(config.dataDir, 'server')
  cleanups.push(() => lock.release())
  try {
    tightenDataDir(config.dataDir, log)
    // Two servers on other data dirs may still name one admin socket (the default): the second
    // fails here, before it opens a datastore or binds a port (the socket may be in the data dir,
    // so after tightenDataDir).
    await prepareAdminSocket(
      config.adminSocket,
      config.adminSocketGroup === undefined ? undefined : groupId(config.adminSocketGroup),
    )
    const datastorePath = config.datastorePath
    const keys = await buildKeyManager(KEY_MANAGERS, config.keyManager, 'server')
    cleanups.push(() => keys.close())
    const keyDir = keys.directory
    if (opts.reset) moveAside(datastorePath, keyDir, log)
    const datastore = await openSqliteDatastore(datastorePath)
    cleanups.push(() => datastore.close())
    const keyManager: KeyManager = keys.keyManager
    if (keyDir !== undefined && keyManager instanceof DiskKeyManager) {
      for (const fixed of await keyManager.tightenPermissions())
        log('warn', 'key file permissions were too open; fixed', { path: fixed })
      await refuseKeysWithoutDatastore(datastore, keyDir, datastorePath)
    } else if (keys.persistent) {
      await refuseTokenKeysWithoutDatastore(
        datastore,
        keyManager,
        `key manager ${keys.name}`,
        datastorePath,
      )
    }
    log('info', 'key manager ready', { keyManager: keys.name })
    await scrubLiveTokenAliases(datastore, trustDomain, log)
    const upstream = config.upstream ? readUpstream(config.upstream) : undefined
    const ca = await CaManager.open({
      trustDomain,
      keyManager,
      datastore,
      keyType: config.caKeyType,
      caTtlSeconds: config.caTtlSeconds,
      clock,
      upstream,
      log,
    })
    const metrics = config.telemetry
      ? new ServerMetrics({ trustDomain: trustDomain.name, version: packageVersion() })
      : undefined
    metrics?.instrumentCa(ca)

    // The server's own SVID: a software key held in memory only, re-issued at half-life. It serves
    // TLS (which needs the key in process) and signs node API responses.
    const provider = new MemoryCertificateProvider()
    const serverId = SpiffeId.fromPath(trustDomain, '/spire/server')
    let identity: ServerIdentity & { notAfter: number; issuedAt: number }
    let tlsIdentity = { certificatePem: '', privateKeyPem: '' }
    let onIdentity = () => {}
    const issueIdentity = async () => {
      const { privateKey, publicKey } = await generateSoftwareKeyPair('ec-p256')
      const issued = await ca.signX509Svid({
        publicKey,
        spiffeId: serverId,
        ttlSeconds: Math.max(300, Math.floor(config.caTtlSeconds / 2)),
        dnsNames: ['localhost'],
      })
      identity = {
        chain: issued.chain,
        signer: softwareKey('server-svid', 'ec-p256', privateKey, publicKey),
        notAfter: issued.notAfter.getTime(),
        issuedAt: clock.now().getTime(),
      }
      tlsIdentity = {
        certificatePem: issued.chain
          .map((c) => new x509.X509Certificate(c).toString('pem'))
          .join('\n'),
        privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      }
      provider.update(tlsIdentity, ca.bundle().toPem())
      onIdentity()
    }
    await issueIdentity()

    const attestors = buildNodeAttestors(config.nodeAttestors, {
      datastore,
      configDir: config.configDir,
      log,
    })

    const api = new NodeApi({
      trustDomain,
      datastore,
      ca,
      attestors,
      identity: () => identity,
      clock,
      agentTtlSeconds: config.agentTtlSeconds,
      defaultX509SvidTtlSeconds: config.defaultX509SvidTtlSeconds,
      defaultJwtSvidTtlSeconds: config.defaultJwtSvidTtlSeconds,
      jwtIssuer: config.jwtIssuer,
      attestRatePerSecond: config.attestRatePerSecond,
      log,
    })
    metrics?.instrumentNodeApi(api, new Set(attestors.keys()))
    const grpcServer = await startNodeGrpcServer(
      api,
      provider,
      config.bindAddress,
      config.bindPort,
      log,
    ).catch((err: unknown) => {
      if (err instanceof SpiffeEdgeError) throw err
      throw new SpiffeEdgeError(
        'ERR_SERVER_BIND',
        `cannot listen on ${config.bindAddress}:${config.bindPort}: ${(err as Error).message}`,
        {
          cause: err,
          remedy:
            'set server.bind_address to an address of this host (0.0.0.0 for all) and bind_port to a free port',
        },
      )
    })
    cleanups.push(() => grpcServer.close())
    const { brokerAccess, mqttServer } = await startMqtt(config, opts.brokerAccess, cleanups, {
      api,
      datastore,
      bundle: () => ca.bundle(),
      identity: () => identity,
      log,
    })

    const federation = await startFederation({
      config: config.federation,
      datastore,
      trustDomain,
      ownBundle: () => ca.bundle(),
      identity: () => tlsIdentity,
      log,
    })
    cleanups.push(() => federation.close())
    onIdentity = () => federation.identityChanged()

    const serverIdString = serverId.toString()
    const admin = await startAdminServer(
      adminCore({
        trustDomain,
        serverId: serverIdString,
        datastore,
        ca,
        clock,
        config,
        log,
        logger,
        brokerAccess,
        federatedBundles: federation.admin,
      }),
      {
        socketPath: config.adminSocket,
        allowedGid:
          config.adminSocketGroup === undefined ? undefined : groupId(config.adminSocketGroup),
        peerCred: opts.peerCred,
        log,
      },
    )
    cleanups.push(() => admin[Symbol.asyncDispose]())

    const tick = setInterval(() => {
      void (async () => {
        try {
          const changed = await ca.rotate()
          const now = clock.now().getTime()
          if (changed || now - identity.issuedAt >= (identity.notAfter - identity.issuedAt) / 2)
            await issueIdentity()
          const nowS = Math.floor(now / 1000)
          await datastore.pruneJoinTokens(nowS)
          await datastore.pruneNonces(now)
          await datastore.pruneAttestRounds(now)
          // Entries past their expiry go (SPIRE: pruning, not a security feature). Agents sync by
          // comparing what they hold, so tombstones are not needed once written.
          await datastore.pruneExpiredEntries(nowS)
          await datastore.pruneEntryTombstones(await datastore.currentRevision())
        } catch (err) {
          log('error', 'rotation tick failed', { error: (err as Error).message })
        }
      })()
    }, opts.tickMs ?? 5000)
    tick.unref()
    cleanups.push(() => clearInterval(tick))

    await startHealthAndMetrics(config, cleanups, {
      datastore,
      mqttServer,
      metrics,
      tickMs: opts.tickMs ?? 5000,
      log,
    })
    log('info', 'server started', {
      trust_domain: trustDomain.name,
      bind: `${config.bindAddress}:${grpcServer.port}`,
      ...(config.mqtt ? { mqtt: config.mqtt.url } : {}),
      admin_socket: config.adminSocket,
    })
    const close = async () => {
      await cleanup()
      log('info', 'server stopped')
      logger?.close()
    }
    return {
      port: grpcServer.port,
      adminSocket: config.adminSocket,
      trustDomain,
      ca,
      datastore,
      api,
      ...(federation.port !== undefined ? { bundleEndpointPort: federation.port } : {}),
      ...(logger ? { logger } : {}),
      close,
      [Symbol.asyncDispose]: close,
    }
  } catch (err) {
    await cleanup()
    logger?.close()
    throw err
  }
}

export { checkEntry, checkIssuableId } from './entry-check.js'

/** A group's numeric id from /etc/group (names only; a number is taken as the id itself). */
export function groupId(name: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(name)) return Number(name)
  let text = ''
  try {
    text = readFileSync(groupFile, 'utf8')
  } catch {
    // fall through to the error below
  }
  for (const line of text.split('\n')) {
    const [n, , gid] = line.split(':')
    if (n === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid)
  }
  throw new ConfigError('server.admin_socket_group', [
    `group '${name}' does not exist on this host`,
  ])
}
