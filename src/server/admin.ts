/**
 * The admin API: JSON over HTTP/1.1 on a local Unix socket (curl --unix-socket works). Access is
 * the socket file's mode (0600, or 0660 with a configured group) and the caller's kernel
 * credentials (SO_PEERCRED, SO_PEERGROUPS): root, the server's own user, or a member of the group
 * (primary or supplementary). No credentials, no access: the server does not start without them.
 */
import { chmodSync, chownSync, lstatSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'
import type { LogLevel } from '../common/log.js'
import { secureSocketDir, socketIsLive } from '../common/socket-dir.js'
import { isSpiffeEdgeError, SpiffeEdgeError } from '../errors.js'
import { socketPeerCred } from '../native/peercred.js'
import type { PeerCredentials } from '../native/types.js'
import {
  federatedRoute,
  federationRoute,
  HttpError,
  loggerRoute,
  mintRoute,
  readJson,
  send,
} from './admin-routes.js'
import type { AttestedNode, Datastore, EntryInput, RegistrationEntry } from './datastore/types.js'
import type { ForeignBundleAdmin } from './federation/index.js'

export interface AdminCore {
  readonly trustDomain: string
  readonly datastore: Datastore
  bundle(): Promise<{ spiffe: string; pem: string; sequence: number }>
  generateJoinToken(
    spiffeId: string | undefined,
    ttlSeconds: number,
  ): Promise<{ token: string; expiresAt: number }>
  /** Bundles of federated trust domains (`bundle list|set|delete|count`, `bundle show -id`). */
  readonly federatedBundles?: ForeignBundleAdmin
  /** Validates an entry (IDs, selectors) and fills defaults; throws coded errors. */
  checkEntry(input: unknown): EntryInput
  /** The server's logger, for `logger get|set|reset` (SPIRE's LoggerAPI). */
  readonly logger?: {
    readonly level: LogLevel
    setLevel(level: LogLevel): void
    resetLevel(): void
  }
  /** The level the config set (what reset returns to). */
  readonly launchLogLevel?: LogLevel
  /** SPIRE's `x509 mint`: an X509-SVID for any ID in the trust domain, for the key in the CSR. */
  mintX509(req: {
    csr: Uint8Array
    spiffeId: string
    ttlSeconds: number
    dnsNames: string[]
  }): Promise<{ chain: Uint8Array[]; expiresAt: number; bundle: string }>
  /** SPIRE's `jwt mint`. */
  mintJwt(req: {
    spiffeId: string
    audience: string[]
    ttlSeconds: number
  }): Promise<{ token: string; expiresAt: number }>
  /** After a ban or eviction: revoke what else the agent holds (its MQTT broker client). */
  agentRemoved?(spiffeId: string): Promise<void>
}

export interface AdminServerOptions {
  readonly socketPath: string
  /** A group id allowed besides root and the server's own user. */
  readonly allowedGid?: number | undefined
  /** Kernel credentials of a connected socket; default: the peercred addon (start fails without it). */
  readonly peerCred?: ((socket: Socket) => PeerCredentials) | undefined
  readonly log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void
}

const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  ERR_USAGE: 400,
  ERR_CONFIG: 400,
  ERR_SPIFFE_ID_INVALID: 400,
  ERR_DATASTORE_INVALID: 400,
  ERR_DATASTORE_NOT_FOUND: 404,
  ERR_DATASTORE_CONFLICT: 409,
  ERR_FEDERATION_STATIC: 409,
  ERR_AUTH: 403,
}

export function entryJson(e: RegistrationEntry): Record<string, unknown> {
  return { ...e }
}

export function agentJson(n: AttestedNode): Record<string, unknown> {
  return { ...n }
}

/** Root, the server's own user, or a member (primary or supplementary) of the allowed group. */
export function callerAllowed(
  cred: PeerCredentials,
  myUid: number,
  allowedGid: number | undefined,
): boolean {
  if (cred.uid === 0 || cred.uid === myUid) return true
  if (allowedGid === undefined) return false
  return cred.gid === allowedGid || (cred.groups?.includes(allowedGid) ?? false)
}

export async function startAdminServer(
  core: AdminCore,
  opts: AdminServerOptions,
): Promise<Server & AsyncDisposable> {
  const ds = core.datastore
  const allowed = new WeakMap<Socket, boolean>()
  const myUid = process.getuid?.() ?? 0
  // Resolved before listening: a server that cannot check callers must not start.
  const peerCred = opts.peerCred ?? socketPeerCred()
  const server = createServer(async (req, res) => {
    try {
      // Only a connection whose credentials were read and passed is served (fail closed).
      if (allowed.get(req.socket) !== true) {
        throw new HttpError(
          403,
          'ERR_AUTH',
          'caller is not allowed on the admin socket',
          'run the admin CLI as root, as the server user, or as a member of admin_socket_group',
        )
      }
      const url = new URL(req.url ?? '/', 'http://admin')
      const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent)
      const route = `${req.method} /${parts.slice(0, 2).join('/')}`
      const id = parts[2]
      switch (route) {
        case 'GET /v1/health': {
          // Shallow (SPIRE's -shallow): the server answers; no datastore check.
          if (url.searchParams.get('shallow') === 'true')
            return send(res, 200, { healthy: true, shallow: true, trust_domain: core.trustDomain })
          // A damaged datastore must not look healthy (quick_check, rate-limited in the store).
          const h = await ds.healthCheck()
          if (!h.ok) return send(res, 503, { healthy: false, error: h.error.toJSON() })
          return send(res, 200, { healthy: true, trust_domain: core.trustDomain })
        }
        case 'GET /v1/bundle': {
          const b = await core.bundle()
          const format = url.searchParams.get('format') ?? 'pem'
          if (format !== 'pem' && format !== 'spiffe') {
            throw new HttpError(
              400,
              'ERR_USAGE',
              `unknown bundle format '${format}'`,
              'use pem or spiffe',
            )
          }
          return send(res, 200, {
            trust_domain: core.trustDomain,
            format,
            sequence: b.sequence,
            bundle: format === 'pem' ? b.pem : b.spiffe,
          })
        }
        case 'GET /v1/federation':
        case 'POST /v1/federation':
        case 'PUT /v1/federation':
        case 'DELETE /v1/federation':
        case 'GET /v1/federated-bundles':
        case 'PUT /v1/federated-bundles':
        case 'DELETE /v1/federated-bundles': {
          if (!core.federatedBundles)
            throw new HttpError(
              404,
              'ERR_USAGE',
              'federation is not available',
              'upgrade the server',
            )
          if (parts[1] === 'federation')
            return await federationRoute(core.federatedBundles.relationships, req, res, parts)
          return await federatedRoute(core.federatedBundles, req, res, url, id)
        }
        case 'POST /v1/entries': {
          const entry = await ds.createEntry(core.checkEntry(await readJson(req)))
          return send(res, 201, entryJson(entry))
        }
        case 'GET /v1/entries': {
          if (id) {
            const e = await ds.getEntry(id)
            if (!e)
              throw new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no entry ${id}`, {
                remedy: 'list entries to find its id',
              })
            return send(res, 200, entryJson(e))
          }
          const filter: { parentId?: string; spiffeId?: string } = {}
          const parentId = url.searchParams.get('parentId')
          const spiffeId = url.searchParams.get('spiffeId')
          if (parentId) filter.parentId = parentId
          if (spiffeId) filter.spiffeId = spiffeId
          return send(res, 200, { entries: (await ds.listEntries(filter)).map(entryJson) })
        }
        case 'PUT /v1/entries': {
          if (!id) throw new HttpError(400, 'ERR_USAGE', 'entry id missing', 'PUT /v1/entries/<id>')
          const entry = await ds.updateEntry(id, core.checkEntry(await readJson(req)))
          return send(res, 200, entryJson(entry))
        }
        case 'DELETE /v1/entries': {
          if (!id)
            throw new HttpError(400, 'ERR_USAGE', 'entry id missing', 'DELETE /v1/entries/<id>')
          await ds.deleteEntry(id)
          return send(res, 200, { deleted: id })
        }
        case 'GET /v1/agents': {
          if (id) {
            const n = await ds.getAttestedNode(id)
            if (!n)
              throw new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no agent ${id}`, {
                remedy: 'list agents to find its SPIFFE ID',
              })
            return send(res, 200, agentJson(n))
          }
          return send(res, 200, { agents: (await ds.listAttestedNodes()).map(agentJson) })
        }
        case 'POST /v1/agents': {
          // POST /v1/agents/<id>/ban
          const action = parts[3]
          if (!id || (action !== 'ban' && action !== 'evict')) {
            throw new HttpError(
              400,
              'ERR_USAGE',
              'use POST /v1/agents/<id>/ban or /evict',
              'see --help',
            )
          }
          if (action === 'ban') await ds.updateAttestedNode(id, { banned: true })
          else await ds.deleteAttestedNode(id)
          await core.agentRemoved?.(id)
          opts.log?.('info', `agent ${action === 'ban' ? 'banned' : 'evicted'}`, { agent: id })
          return send(res, 200, { [action === 'ban' ? 'banned' : 'evicted']: id })
        }
        case 'GET /v1/logger':
        case 'PUT /v1/logger':
        case 'DELETE /v1/logger':
          return await loggerRoute(core, req, res, opts.log)
        case 'POST /v1/mint':
          return await mintRoute(core, req, res, id, opts.log)
        case 'POST /v1/tokens': {
          const body = (await readJson(req)) as { spiffe_id?: unknown; ttl?: unknown }
          const ttl = body.ttl === undefined ? 600 : Number(body.ttl)
          if (!Number.isInteger(ttl) || ttl < 1 || ttl > 30 * 86400) {
            throw new HttpError(
              400,
              'ERR_USAGE',
              'ttl must be 1 to 2592000 seconds',
              'pass --ttl in seconds',
            )
          }
          if (body.spiffe_id !== undefined && typeof body.spiffe_id !== 'string') {
            throw new HttpError(400, 'ERR_USAGE', 'spiffe_id must be a string', 'pass --spiffeID')
          }
          const t = await core.generateJoinToken(body.spiffe_id, ttl)
          return send(res, 201, { token: t.token, expires_at: t.expiresAt })
        }
        default:
          throw new HttpError(
            404,
            'ERR_USAGE',
            `no admin route ${route}`,
            'see spiffe-edge server --help',
          )
      }
    } catch (err) {
      if (isSpiffeEdgeError(err)) {
        const status = err instanceof HttpError ? err.status : (STATUS_BY_CODE[err.code] ?? 500)
        return send(res, status, { error: err.toJSON() })
      }
      opts.log?.('warn', 'admin request failed', { error: (err as Error).message })
      return send(res, 500, { error: { code: 'ERR_INTERNAL', message: (err as Error).message } })
    }
  })
  server.on('connection', (socket: Socket) => {
    try {
      allowed.set(socket, callerAllowed(peerCred(socket), myUid, opts.allowedGid))
    } catch (err) {
      allowed.set(socket, false) // fail closed: no credentials, no access
      opts.log?.('warn', 'cannot read admin caller credentials; refusing', {
        error: (err as Error).message,
      })
    }
  })
  await prepareAdminSocket(opts.socketPath, opts.allowedGid)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.socketPath, () => resolve())
  })
  chmodSync(opts.socketPath, opts.allowedGid === undefined ? 0o600 : 0o660)
  if (opts.allowedGid !== undefined) chownSync(opts.socketPath, myUid, opts.allowedGid)
  const closable = server as Server & AsyncDisposable
  closable[Symbol.asyncDispose] = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
  return closable
}

function lstatOrMissing(p: string): ReturnType<typeof lstatSync> | undefined {
  try {
    return lstatSync(p)
  } catch {
    return undefined
  }
}

/**
 * Checks the admin socket's directory (ours, `private` made 0700 or 0750 for the group) and that
 * no live server answers on the socket. A stale socket from a crashed server is removed; a live
 * one is another server's (two servers with the default admin socket), so this one refuses
 * instead of taking the path over. Called before the server opens anything, and again just
 * before listen.
 */
export async function prepareAdminSocket(socketPath: string, allowedGid?: number): Promise<void> {
  // The directory must be ours: another user who owns it could swap the socket and answer
  // `bundle show` with a CA of their own (the same rule as the Workload API socket's).
  secureSocketDir(socketPath, undefined, {
    what: 'the admin socket',
    code: 'ERR_ADMIN_SOCKET',
    dirMode: allowedGid === undefined ? 0o700 : 0o750,
    ...(allowedGid === undefined ? {} : { dirGid: allowedGid }),
  })
  const existing = lstatOrMissing(socketPath)
  if (existing === undefined) return
  if (!existing.isSocket()) {
    throw new SpiffeEdgeError('ERR_ADMIN_SOCKET', `${socketPath} exists and is not a socket`, {
      remedy: 'remove it, or set admin_socket / --admin-socket to another path',
    })
  }
  if (await socketIsLive(socketPath)) {
    throw new SpiffeEdgeError(
      'ERR_ADMIN_SOCKET_IN_USE',
      `another server is listening on the admin socket ${socketPath}`,
      {
        remedy:
          'stop the other server, or give this one its own admin_socket / --admin-socket (two servers cannot share the default)',
      },
    )
  }
  rmSync(socketPath) // stale: nothing answers on it
}
