/**
 * The server halves' cloud API client for GCP (OAuth2 token endpoint, Compute Engine) and Azure
 * (Entra ID token endpoint, Resource Manager): one bounded JSON call. Every failure is a
 * CloudAttestationError with reason 'api' (code ERR_CLOUD_API), so an attestation that needs the
 * API is refused when the API cannot answer (fail closed). AWS goes through the AWS SDK instead
 * (aws/ec2.ts), which brings SigV4 and the EC2 Query protocol.
 */
import { CloudAttestationError, readCapped } from './common.js'

/** Cloud API answers (an instance, a VM, a NIC, a token) are a few KiB; GCP metadata can be more. */
export const MAX_API_BYTES = 512 * 1024
export const DEFAULT_API_TIMEOUT_MS = 10_000

export interface ApiRequest {
  readonly url: string
  readonly method?: 'GET' | 'POST'
  readonly headers?: Readonly<Record<string, string>>
  /** application/x-www-form-urlencoded body (token requests). */
  readonly form?: Readonly<Record<string, string>>
  readonly timeoutMs: number
  readonly maxBytes?: number
}

export interface ApiAnswer {
  readonly status: number
  readonly json: Record<string, unknown>
}

/** The message of a cloud error answer: Google and ARM {error:{code,message}}, OAuth2 {error, error_description}. */
export function errorText(json: Record<string, unknown>): string {
  const e = json.error
  if (typeof e === 'object' && e !== null) {
    const o = e as Record<string, unknown>
    return [o.code, o.status, o.message]
      .filter((x) => x !== undefined)
      .join(' ')
      .slice(0, 300)
  }
  if (typeof e === 'string') {
    const d = typeof json.error_description === 'string' ? `: ${json.error_description}` : ''
    return `${e}${d}`.slice(0, 300)
  }
  return ''
}

/**
 * One JSON call: a deadline over connect, headers and body; at most maxBytes; no redirects (a
 * redirect could carry the bearer token elsewhere). Answers any status with a JSON object body;
 * transport failures, oversize and non-JSON bodies throw.
 */
export async function apiCall(attestor: string, what: string, r: ApiRequest): Promise<ApiAnswer> {
  const fail = (m: string, cause?: unknown) =>
    new CloudAttestationError(attestor, 'api', `${what}: ${m}`, cause)
  const headers: Record<string, string> = { Accept: 'application/json', ...(r.headers ?? {}) }
  let body: string | undefined
  if (r.form) {
    body = new URLSearchParams(r.form as Record<string, string>).toString()
    headers['Content-Type'] = 'application/x-www-form-urlencoded'
  }
  let res: Response
  try {
    res = await fetch(r.url, {
      method: r.method ?? (body === undefined ? 'GET' : 'POST'),
      headers,
      ...(body === undefined ? {} : { body }),
      redirect: 'error',
      signal: AbortSignal.timeout(r.timeoutMs),
    })
  } catch (err) {
    const why = (err as Error).name === 'TimeoutError' ? `no answer in ${r.timeoutMs} ms` : (err as Error).message
    throw fail(`${new URL(r.url).origin} did not answer (${why})`, err)
  }
  const text = await readCapped(res, r.maxBytes ?? MAX_API_BYTES, fail)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw fail(`answered ${res.status} with a body that is not JSON`, err)
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw fail(`answered ${res.status} with JSON that is not an object`)
  }
  return { status: res.status, json: json as Record<string, unknown> }
}

/** A 2xx answer's JSON, else the refusal naming the API's own error. */
export function expectOk(attestor: string, what: string, a: ApiAnswer): Record<string, unknown> {
  if (a.status >= 200 && a.status <= 299) return a.json
  throw new CloudAttestationError(
    attestor,
    'api',
    `${what}: answered ${a.status} ${errorText(a.json)}`.trim(),
  )
}

/** An OAuth2 access token cached until a minute before it expires. */
export class TokenCache {
  private token: string | undefined
  private until = 0
  private pending: Promise<string> | undefined

  private readonly fetchToken: () => Promise<{ token: string; expiresIn: number }>

  constructor(fetchToken: () => Promise<{ token: string; expiresIn: number }>) {
    this.fetchToken = fetchToken
  }

  async get(): Promise<string> {
    if (this.token !== undefined && Date.now() < this.until) return this.token
    // One token request at a time: concurrent attestations share it.
    this.pending ??= this.fetchToken()
      .then(({ token, expiresIn }) => {
        this.token = token
        this.until = Date.now() + Math.max(0, expiresIn - 60) * 1000
        return token
      })
      .finally(() => {
        this.pending = undefined
      })
    return this.pending
  }

  /** After a 401: the cached token is no longer good. */
  clear(): void {
    this.token = undefined
    this.until = 0
  }
}

/** expires_in from a token answer: a number or (Entra ID v1) a string of digits. */
export function expiresIn(v: unknown): number {
  const n = typeof v === 'string' && /^\d{1,9}$/.test(v) ? Number(v) : v
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? Math.min(n, 86400) : 300
}
