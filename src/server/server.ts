/**
 * The server's composition root: datastore, key manager, CA, node attestors, the node API over
 * gRPC, the admin API on its Unix socket, and the timers that rotate keys and prune. Everything is
 * passed in or built here; nothing is reached through module state.
 */
import { createPrivateKey, randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync } from 'node:fs'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import {
  hashJoinToken,
  JOIN_TOKEN,
  joinTokenServerAttestor,
} from '../attestors/join-token/server.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../attestors/tpm/server.js'
import type { ServerNodeAttestor } from '../attestors/types.js'
import { ConfigError } from '../common/config.js'
import { jsonLogger, type Log } from '../common/log.js'
import { x509 } from '../common/x509.js'
import { SpiffeEdgeError } from '../errors.js'
import { DiskKeyManager } from '../keymanager/disk.js'
import { generateSoftwareKeyPair, MemoryKeyManager, softwareKey } from '../keymanager/memory.js'
import { type KeyManager, softwareSigner } from '../keymanager/types.js'
import type { PeerCredentials } from '../native/types.js'
import { parsePemCertificates } from '../spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../spiffe/id.js'
import { startAdminServer } from './admin.js'
import { CaManager, type Clock, type UpstreamAuthority } from './ca.js'
import type { ServerConfig } from './config.js'
import { openSqliteDatastore } from './datastore/sqlite.js'
import type { Datastore, EntryInput, Selector } from './datastore/types.js'
import { MemoryCertificateProvider, startNodeGrpcServer } from './grpc.js'
import { NodeApi, type ServerIdentity } from './node-api.js'

export interface RunningServer extends AsyncDisposable {
  readonly port: number
  readonly adminSocket: string
  readonly trustDomain: TrustDomain
  readonly ca: CaManager
  readonly datastore: Datastore
  readonly api: NodeApi
  close(): Promise<void>
}

export interface StartServerOptions {
  readonly clock?: Clock
  readonly log?: Log
  /** Kernel credentials for the admin socket (from the TPM addon's peerCred, when available). */
  readonly peerCred?: ((socket: Socket) => PeerCredentials) | undefined
  /** How often keys rotate and stale rows are pruned (ms). */
  readonly tickMs?: number
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
  const log = opts.log ?? jsonLogger(config.logLevel, 'server')
  const clock = opts.clock ?? { now: () => new Date() }
  const trustDomain = TrustDomain.parse(config.trustDomain)
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 })
  const cleanups: (() => Promise<void> | void)[] = []
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c()
  }
  try {
    const datastore = await openSqliteDatastore(join(config.dataDir, 'datastore.sqlite3'))
    cleanups.push(() => datastore.close())
    const keyManager: KeyManager =
      config.keyManager.kind === 'disk'
        ? new DiskKeyManager(config.keyManager.directory)
        : new MemoryKeyManager()
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

    // The server's own SVID: a software key held in memory only, re-issued at half-life. It serves
    // TLS (which needs the key in process) and signs node API responses.
    const provider = new MemoryCertificateProvider()
    const serverId = SpiffeId.fromPath(trustDomain, '/spire/server')
    let identity: ServerIdentity & { notAfter: number; issuedAt: number }
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
      provider.update(
        {
          certificatePem: issued.chain
            .map((c) => new x509.X509Certificate(c).toString('pem'))
            .join('\n'),
          privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        },
        ca.bundle().toPem(),
      )
    }
    await issueIdentity()

    const attestors = new Map<string, ServerNodeAttestor>()
    for (const [name, data] of config.nodeAttestors) {
      if (name === JOIN_TOKEN) {
        if (Object.keys(data).length > 0)
          throw new ConfigError('plugins.NodeAttestor.join_token', ['takes no settings'])
        attestors.set(name, joinTokenServerAttestor(datastore))
      } else if (name === 'tpm') {
        attestors.set(name, tpmServerAttestor(parseTpmServerConfig(data, config.configDir), log))
      } else {
        throw new ConfigError('plugins.NodeAttestor', [
          `${name}: unknown node attestor (this server has: ${JOIN_TOKEN})`,
        ])
      }
    }

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
      attestRatePerSecond: config.attestRatePerSecond,
      log,
    })
    const grpcServer = await startNodeGrpcServer(
      api,
      provider,
      config.bindAddress,
      config.bindPort,
      log,
    )
    cleanups.push(() => grpcServer.close())

    const serverIdString = serverId.toString()
    const admin = await startAdminServer(
      {
        trustDomain: trustDomain.name,
        datastore,
        async bundle() {
          const b = ca.bundle()
          return { spiffe: b.toSpiffeJson(), pem: b.toPem(), sequence: b.sequence }
        },
        checkEntry: (input) => checkEntry(input, trustDomain, serverIdString),
        async generateJoinToken(spiffeId, ttlSeconds) {
          // Hex, not base64url: a token starting with '-' would be read as a flag on a command line.
          const token = randomBytes(32).toString('hex')
          const expiresAt = Math.floor(clock.now().getTime() / 1000) + ttlSeconds
          const agentId = `spiffe://${trustDomain.name}/spire/agent/${JOIN_TOKEN}/${token}`
          if (spiffeId !== undefined) {
            const id = SpiffeId.parse(spiffeId)
            if (!id.memberOf(trustDomain))
              throw badEntry(`${spiffeId} is not in trust domain ${trustDomain.name}`)
            // As SPIRE does: an entry giving the agent (by its future ID) this SPIFFE ID, so
            // workload entries can be parented to a stable name instead of the token.
            await datastore.createEntry({
              spiffeId,
              parentId: agentId,
              selectors: [{ type: 'spiffe_id', value: agentId }],
              x509SvidTtl: 0,
              jwtSvidTtl: 0,
              dnsNames: [],
              hint: '',
              federatesWith: [],
              admin: false,
              downstream: false,
              expiresAt: null,
            })
          }
          await datastore.createJoinToken({
            tokenHash: hashJoinToken(token),
            expiresAt,
            ...(spiffeId ? { spiffeId } : {}),
          })
          log('info', 'join token generated', {
            expires_at: expiresAt,
            ...(spiffeId ? { spiffe_id: spiffeId } : {}),
          })
          return { token, expiresAt }
        },
      },
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

    log('info', 'server started', {
      trust_domain: trustDomain.name,
      bind: `${config.bindAddress}:${grpcServer.port}`,
      admin_socket: config.adminSocket,
    })
    const close = async () => {
      await cleanup()
      log('info', 'server stopped')
    }
    return {
      port: grpcServer.port,
      adminSocket: config.adminSocket,
      trustDomain,
      ca,
      datastore,
      api,
      close,
      [Symbol.asyncDispose]: close,
    }
  } catch (err) {
    await cleanup()
    throw err
  }
}

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

function badEntry(message: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_INVALID', message, {
    remedy: 'fix the entry and try again',
  })
}

/** Validates an admin API entry body (snake_case JSON) into a datastore EntryInput. */
export function checkEntry(input: unknown, td: TrustDomain, serverId: string): EntryInput {
  if (typeof input !== 'object' || input === null) throw badEntry('entry must be a JSON object')
  const b = input as Record<string, unknown>
  const str = (k: string, def?: string): string => {
    const v = b[k] ?? def
    if (typeof v !== 'string') throw badEntry(`${k} must be a string`)
    return v
  }
  const strs = (k: string): string[] => {
    const v = b[k] ?? []
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
      throw badEntry(`${k} must be a list of strings`)
    return v as string[]
  }
  const ttl = (k: string): number => {
    const v = b[k] ?? 0
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
      throw badEntry(`${k} must be a non-negative integer`)
    return v
  }
  const spiffeId = SpiffeId.parse(str('spiffe_id'))
  if (!spiffeId.memberOf(td))
    throw badEntry(`spiffe_id ${spiffeId} is not in trust domain ${td.name}`)
  const parentId = b.node === true ? serverId : SpiffeId.parse(str('parent_id')).toString()
  if (!SpiffeId.parse(parentId).memberOf(td))
    throw badEntry(`parent_id ${parentId} is not in trust domain ${td.name}`)
  if (spiffeId.toString() === serverId) throw badEntry('an entry cannot issue the server ID')
  const rawSelectors = b.selectors
  if (!Array.isArray(rawSelectors) || rawSelectors.length === 0)
    throw badEntry('at least one selector is required')
  const selectors: Selector[] = rawSelectors.map((s) => {
    const t = (s as { type?: unknown }).type
    const v = (s as { value?: unknown }).value
    if (typeof t !== 'string' || typeof v !== 'string' || !/^[a-z0-9_]+$/.test(t) || v === '') {
      throw badEntry('selectors must be {type, value} with a lowercase type and a non-empty value')
    }
    return { type: t, value: v }
  })
  const dnsNames = strs('dns_names')
  for (const d of dnsNames) {
    if (
      !/^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(
        d,
      ) ||
      d.length > 253
    ) {
      throw badEntry(`dns name '${d}' is not valid`)
    }
  }
  const federatesWith = strs('federates_with').map(
    (t) => TrustDomain.parse(t.replace(/^spiffe:\/\//, '')).name,
  )
  const expires = b.expires_at
  if (
    expires !== undefined &&
    expires !== null &&
    (typeof expires !== 'number' || !Number.isInteger(expires) || expires < 0)
  ) {
    throw badEntry('expires_at must be unix seconds')
  }
  return {
    spiffeId: spiffeId.toString(),
    parentId,
    selectors,
    x509SvidTtl: ttl('x509_svid_ttl'),
    jwtSvidTtl: ttl('jwt_svid_ttl'),
    dnsNames,
    hint: str('hint', ''),
    federatesWith,
    admin: b.admin === true,
    downstream: b.downstream === true,
    expiresAt: typeof expires === 'number' ? expires : null,
  }
}
