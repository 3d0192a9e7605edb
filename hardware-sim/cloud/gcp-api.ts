/**
 * The simulated Google APIs the gcp_iit server may call with use_instance_metadata, as they are
 * on the wire, on the metadata service's port:
 *  - the OAuth2 token endpoint (POST /token, RFC 7523 JWT bearer grant): the assertion must be
 *    RS256-signed by the simulated service account's key (checked with jose against its public
 *    key), name the account as iss, this endpoint as aud, a Compute or cloud-platform scope, and
 *    live at most an hour; else 400 invalid_grant as Google answers;
 *    An authorized_user's refresh-token grant (client ID, secret and refresh token checked, else
 *    400 invalid_grant / 401 invalid_client) is answered there too;
 *  - `issue()` mints the tokens the metadata server hands the instance's own service account
 *    (/computeMetadata/v1/instance/service-accounts/default/token, served in service.ts);
 *  - Compute Engine instances.get (GET /compute/v1/projects/<p>/zones/<z>/instances/<name>) with
 *    a bearer token from that endpoint: the instance resource JSON with its network tags, labels,
 *    metadata items and service accounts; 401 UNAUTHENTICATED, 404 notFound as Compute answers.
 */

import type { KeyObject } from 'node:crypto'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { jwtVerify } from 'jose'

export interface GcpApiIdentity {
  readonly gcpInstanceId: string
  readonly projectId: string
  readonly zone: string
  readonly instanceName: string
  readonly serviceAccount: string
  readonly networkTags: readonly string[]
  readonly labels: Readonly<Record<string, string>>
  readonly metadata: Readonly<Record<string, string>>
  /** The service account the server calls the API as (its key is the sim's). */
  readonly apiServiceAccount: string
  readonly gcpUser: {
    readonly clientId: string
    readonly clientSecret: string
    readonly refreshToken: string
  }
}

const MAX_BODY = 64 * 1024
const SCOPES = [
  'https://www.googleapis.com/auth/compute.readonly',
  'https://www.googleapis.com/auth/compute',
  'https://www.googleapis.com/auth/cloud-platform',
]

function json(res: ServerResponse, status: number, o: unknown) {
  const body = JSON.stringify(o)
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=UTF-8',
    'Content-Length': Buffer.byteLength(body),
  })
  res.end(body)
}

const computeError = (
  res: ServerResponse,
  code: number,
  status: string,
  reason: string,
  message: string,
) =>
  json(res, code, {
    error: { code, message, errors: [{ message, domain: 'global', reason }], status },
  })

/** A request body up to MAX_BODY bytes (undefined beyond): shared with the Azure simulator. */
export async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length
    if (size > MAX_BODY) return undefined
    chunks.push(c)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** Routes /token and /compute/v1/…; returns false for any other path (the metadata server's). */
export function gcpApiHandler(
  id: GcpApiIdentity,
  saPublicKey: KeyObject,
  saKeyId: string,
  startedAt: Date,
) {
  const tokens = new Map<string, number>()
  const created = startedAt.toISOString()
  const issue = () => {
    if (tokens.size > 10_000) tokens.clear()
    const t = `ya29.sim-${randomBytes(32).toString('base64url')}`
    tokens.set(t, Date.now() + 3600_000)
    return { access_token: t, expires_in: 3599, token_type: 'Bearer' }
  }
  const same = (a: string | null, b: string) =>
    a !== null && a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b))

  const refresh = (res: ServerResponse, form: URLSearchParams) => {
    const u = id.gcpUser
    if (form.get('client_id') !== u.clientId || !same(form.get('client_secret'), u.clientSecret))
      return json(res, 401, { error: 'invalid_client', error_description: 'Unauthorized' })
    if (!same(form.get('refresh_token'), u.refreshToken))
      return json(res, 400, { error: 'invalid_grant', error_description: 'Bad Request' })
    return json(res, 200, { ...issue(), scope: 'https://www.googleapis.com/auth/cloud-platform' })
  }

  const token = async (req: IncomingMessage, res: ServerResponse) => {
    const invalid = (d: string) => json(res, 400, { error: 'invalid_grant', error_description: d })
    if (req.method !== 'POST') return json(res, 405, { error: 'invalid_request' })
    const body = await readBody(req)
    if (body === undefined) return json(res, 413, { error: 'invalid_request' })
    const form = new URLSearchParams(body)
    if (form.get('grant_type') === 'refresh_token') return refresh(res, form)
    if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer')
      return json(res, 400, {
        error: 'unsupported_grant_type',
        error_description: 'Invalid grant_type.',
      })
    const assertion = form.get('assertion') ?? ''
    const aud = `http://${req.headers.host}/token`
    let payload: Record<string, unknown>
    try {
      const r = await jwtVerify(assertion, saPublicKey, {
        algorithms: ['RS256'],
        clockTolerance: 30,
      })
      if (r.protectedHeader.kid !== undefined && r.protectedHeader.kid !== saKeyId)
        return invalid('Invalid JWT Signature.')
      payload = r.payload as Record<string, unknown>
    } catch {
      return invalid('Invalid JWT Signature.')
    }
    if (payload.iss !== id.apiServiceAccount)
      return invalid('Invalid JWT: iss does not match a service account.')
    if (payload.aud !== aud)
      return invalid(
        'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.',
      )
    const iat = Number(payload.iat)
    const exp = Number(payload.exp)
    if (!(exp - iat <= 3600) || iat > Date.now() / 1000 + 60)
      return invalid(
        'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.',
      )
    const scopes = String(payload.scope ?? '').split(' ')
    if (!scopes.some((s) => SCOPES.includes(s)))
      return json(res, 400, {
        error: 'invalid_scope',
        error_description: 'Invalid OAuth scope or ID token audience provided.',
      })
    return json(res, 200, issue())
  }

  const instance = (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (req.method !== 'GET')
      return computeError(
        res,
        405,
        'METHOD_NOT_ALLOWED',
        'httpMethodNotAllowed',
        'Method not allowed',
      )
    const auth = String(req.headers.authorization ?? '')
    const exp = tokens.get(auth.replace(/^Bearer /, ''))
    if (!auth.startsWith('Bearer ') || exp === undefined || exp < Date.now())
      return computeError(
        res,
        401,
        'UNAUTHENTICATED',
        'authError',
        'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      )
    const m = /^\/compute\/v1\/projects\/([^/]+)\/zones\/([^/]+)\/instances\/([^/]+)$/.exec(
      url.pathname,
    )
    const [p, z, n] = (m?.slice(1) ?? []).map(decodeURIComponent)
    if (!m || p !== id.projectId || z !== id.zone || n !== id.instanceName)
      return computeError(
        res,
        404,
        'NOT_FOUND',
        'notFound',
        `The resource 'projects/${p}/zones/${z}/instances/${n}' was not found`,
      )
    const zoneUrl = `https://www.googleapis.com/compute/v1/projects/${p}/zones/${z}`
    return json(res, 200, {
      kind: 'compute#instance',
      id: id.gcpInstanceId,
      creationTimestamp: created,
      name: id.instanceName,
      tags: { items: id.networkTags, fingerprint: randomBytes(8).toString('base64') },
      machineType: `${zoneUrl}/machineTypes/e2-small`,
      status: 'RUNNING',
      zone: zoneUrl,
      networkInterfaces: [
        { kind: 'compute#networkInterface', name: 'nic0', networkIP: '10.132.0.2' },
      ],
      metadata: {
        kind: 'compute#metadata',
        fingerprint: randomBytes(8).toString('base64'),
        items: Object.entries(id.metadata).map(([key, value]) => ({ key, value })),
      },
      serviceAccounts: [
        { email: id.serviceAccount, scopes: ['https://www.googleapis.com/auth/cloud-platform'] },
      ],
      selfLink: `${zoneUrl}/instances/${id.instanceName}`,
      labels: id.labels,
      labelFingerprint: randomBytes(8).toString('base64'),
    })
  }

  const handle = (
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
  ): Promise<void> | void | false => {
    if (url.pathname === '/token') return token(req, res)
    if (url.pathname.startsWith('/compute/v1/')) return instance(req, res, url)
    return false
  }
  return { handle, issue }
}
