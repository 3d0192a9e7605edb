/**
 * Admin API plumbing and the smaller routes (logger, x509/jwt mint, foreign bundles), kept apart
 * from admin.ts, which holds the server, the caller check and the route table.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { LOG_LEVELS, type LogLevel } from '../common/log.js'
import { SpiffeEdgeError } from '../errors.js'
import type { AdminCore } from './admin.js'
import type { ForeignBundleAdmin } from './federation/index.js'
import type { RelationshipAdmin } from './federation/relationships.js'

type AdminLog =
  | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
  | undefined

export class HttpError extends SpiffeEdgeError {
  readonly status: number
  constructor(status: number, code: 'ERR_USAGE' | 'ERR_AUTH', message: string, remedy: string) {
    super(code, message, { remedy })
    this.status = status
  }
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of req) {
    size += (c as Buffer).length
    if (size > 1 << 20)
      throw new HttpError(400, 'ERR_USAGE', 'request body over 1 MiB', 'send less')
    chunks.push(c as Buffer)
  }
  if (size === 0) return {}
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new HttpError(400, 'ERR_USAGE', 'request body is not JSON', 'send a JSON object')
  }
}

export function send(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

export function bundleFormat(v: unknown): 'pem' | 'spiffe' {
  const f = v ?? 'pem'
  if (f !== 'pem' && f !== 'spiffe')
    throw new HttpError(
      400,
      'ERR_USAGE',
      `unknown bundle format '${String(f)}'`,
      'use pem or spiffe',
    )
  return f
}

/** /v1/federated-bundles[/<td>]: list (or ?count=true), show, set (PUT), delete. */
export async function federatedRoute(
  fb: ForeignBundleAdmin,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  id: string | undefined,
): Promise<void> {
  if (req.method === 'GET' && id === undefined) {
    if (url.searchParams.get('count') === 'true') return send(res, 200, { count: await fb.count() })
    const format = bundleFormat(url.searchParams.get('format') ?? undefined)
    return send(res, 200, { bundles: await fb.list(format), federation: fb.status() })
  }
  if (id === undefined)
    throw new HttpError(400, 'ERR_USAGE', 'name the trust domain', 'pass -id spiffe://<td>')
  if (req.method === 'GET')
    return send(
      res,
      200,
      await fb.show(id, bundleFormat(url.searchParams.get('format') ?? undefined)),
    )
  if (req.method === 'DELETE') {
    await fb.delete(id)
    return send(res, 200, { deleted: id })
  }
  const body = (await readJson(req)) as { bundle?: unknown; format?: unknown }
  if (typeof body.bundle !== 'string')
    throw new HttpError(400, 'ERR_USAGE', 'bundle must be a string', 'pass -path FILE')
  return send(res, 200, await fb.set(id, body.bundle, bundleFormat(body.format)))
}

/**
 * /v1/federation: GET (list) | GET /<td> (show) | POST {relationships: […]} (batch create) |
 * PUT {relationships: […]} (batch update) | DELETE /<td> | POST /<td>/refresh. Batch answers
 * carry one result per item, as SPIRE's trust domain API (200 even when some failed).
 */
export async function federationRoute(
  rels: RelationshipAdmin,
  req: IncomingMessage,
  res: ServerResponse,
  parts: readonly string[],
): Promise<void> {
  const id = parts[2]
  if (req.method === 'GET')
    return send(res, 200, id === undefined ? { relationships: rels.list() } : rels.show(id))
  if (req.method === 'DELETE') {
    if (id === undefined)
      throw new HttpError(400, 'ERR_USAGE', 'name the trust domain', 'pass -id spiffe://<td>')
    await rels.delete(id)
    return send(res, 200, { deleted: id })
  }
  if (req.method === 'POST' && id !== undefined && parts[3] === 'refresh') {
    rels.refresh(id)
    return send(res, 202, { refreshing: id })
  }
  if (id !== undefined)
    throw new HttpError(
      400,
      'ERR_USAGE',
      'create and update take no trust domain in the path',
      'POST or PUT /v1/federation',
    )
  const body = (await readJson(req)) as { relationships?: unknown }
  if (!Array.isArray(body.relationships))
    throw new HttpError(400, 'ERR_USAGE', 'relationships must be a list', 'use the CLI')
  const results =
    req.method === 'POST'
      ? await rels.create(body.relationships)
      : await rels.update(body.relationships)
  return send(res, 200, { results })
}

/** GET / PUT {level} / DELETE /v1/logger: SPIRE's logger get|set|reset. */
export async function loggerRoute(
  core: AdminCore,
  req: IncomingMessage,
  res: ServerResponse,
  log: AdminLog,
): Promise<void> {
  const lg = core.logger
  if (!lg)
    throw new HttpError(
      400,
      'ERR_USAGE',
      'this server has no adjustable logger',
      'run it with spiffe-edge server run',
    )
  if (req.method === 'PUT') {
    const body = (await readJson(req)) as { level?: unknown }
    const level = typeof body.level === 'string' ? body.level.toLowerCase() : ''
    if (!(LOG_LEVELS as readonly string[]).includes(level))
      throw new HttpError(
        400,
        'ERR_USAGE',
        `unknown log level '${String(body.level)}'`,
        `use one of ${LOG_LEVELS.join(', ')}`,
      )
    lg.setLevel(level as LogLevel)
    log?.('info', 'log level set', { level })
  } else if (req.method === 'DELETE') {
    lg.resetLevel()
    log?.('info', 'log level reset', { level: lg.level })
  }
  return send(res, 200, {
    current_level: lg.level,
    launch_level: core.launchLogLevel ?? lg.level,
  })
}

/** POST /v1/mint/x509 | /v1/mint/jwt (SPIRE: x509 mint, jwt mint). */
export async function mintRoute(
  core: AdminCore,
  req: IncomingMessage,
  res: ServerResponse,
  id: string | undefined,
  log: AdminLog,
): Promise<void> {
  // POST /v1/mint/x509 | /v1/mint/jwt (SPIRE: x509 mint, jwt mint). Admin callers only,
  // like every route here; the private key never comes to the server (x509 sends a CSR).
  const body = (await readJson(req)) as Record<string, unknown>
  const spiffeId = body.spiffe_id
  const ttl = body.ttl === undefined ? 0 : Number(body.ttl)
  if (typeof spiffeId !== 'string')
    throw new HttpError(400, 'ERR_USAGE', 'spiffe_id must be a string', 'pass -spiffeID')
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 30 * 86400)
    throw new HttpError(400, 'ERR_USAGE', 'ttl must be 0 to 2592000 seconds', 'pass -ttl')
  if (id === 'x509') {
    const csr = typeof body.csr === 'string' ? Buffer.from(body.csr, 'base64') : undefined
    const dns = Array.isArray(body.dns_names) ? body.dns_names : []
    if (!csr || csr.length === 0 || dns.some((d) => typeof d !== 'string'))
      throw new HttpError(
        400,
        'ERR_USAGE',
        'csr (base64 DER) and string dns_names required',
        'use the CLI',
      )
    const r = await core.mintX509({
      csr,
      spiffeId,
      ttlSeconds: ttl,
      dnsNames: dns as string[],
    })
    log?.('info', 'x509-svid minted', { spiffe_id: spiffeId })
    return send(res, 201, {
      chain: r.chain.map((c) => Buffer.from(c).toString('base64')),
      expires_at: r.expiresAt,
      bundle: r.bundle,
    })
  }
  if (id === 'jwt') {
    const aud = body.audience
    if (
      !Array.isArray(aud) ||
      aud.length === 0 ||
      aud.some((a) => typeof a !== 'string' || a === '')
    )
      throw new HttpError(400, 'ERR_USAGE', 'at least one audience is required', 'pass -audience')
    const r = await core.mintJwt({ spiffeId, audience: aud as string[], ttlSeconds: ttl })
    log?.('info', 'jwt-svid minted', { spiffe_id: spiffeId })
    return send(res, 201, { token: r.token, expires_at: r.expiresAt })
  }
  throw new HttpError(400, 'ERR_USAGE', 'use POST /v1/mint/x509 or /v1/mint/jwt', 'see --help')
}
