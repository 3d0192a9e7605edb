/**
 * What the server halves' cloud API clients share (the GCP Compute lookup, the Azure Resource
 * Manager lookup): one bounded JSON exchange (a deadline over connect, headers and body, a size
 * cap, no redirects), the https-only rule for URLs a bearer token or secret travels to, and an
 * access-token cache that runs one exchange at a time. Failures are `[api]` refusals
 * (ERR_CLOUD_API): configured and unanswerable means no attestation.
 */
import { CloudAttestationError, readCapped } from './common.js'

export const DEFAULT_API_TIMEOUT_MS = 10_000
/** Cloud resources (an instance, a VM, a NIC) are a few KiB; 1 MiB is far beyond any of them. */
export const MAX_API_ANSWER = 1024 * 1024

/** The link-local address both clouds' metadata services answer on (plain http by design). */
const METADATA_HOSTS = ['169.254.169.254', 'metadata.google.internal']

/**
 * Bearer tokens and secrets travel to these URLs: https, or http only to this host (the
 * simulator, a local proxy) or, for a metadata service, to its link-local address. Returns a
 * problem or undefined.
 */
export function insecureUrlProblem(
  what: string,
  url: string,
  metadataService = false,
): string | undefined {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return `${what}: ${JSON.stringify(url)} is not a URL`
  }
  if (u.protocol === 'https:') return undefined
  const hosts = ['127.0.0.1', 'localhost', '[::1]', ...(metadataService ? METADATA_HOSTS : [])]
  if (u.protocol === 'http:' && hosts.includes(u.hostname)) return undefined
  return `${what}: ${url} must be https (http only to the loopback address${metadataService ? ' or the metadata service' : ''})`
}

export interface ApiAnswer {
  readonly status: number
  /** The body parsed as JSON, or undefined when it is not JSON. */
  readonly json: unknown
  readonly text: string
}

export function apiFailure(
  attestor: string,
  what: string,
  why: string,
  cause?: unknown,
): CloudAttestationError {
  return new CloudAttestationError(attestor, 'api', `${what}: ${why}`.slice(0, 500), cause)
}

/** One bounded exchange; any status is returned, transport failures and oversize throw [api]. */
export async function apiCall(
  attestor: string,
  what: string,
  url: string,
  init: RequestInit,
  timeoutMs: number,
  maxBytes = MAX_API_ANSWER,
): Promise<ApiAnswer> {
  const why = (e: Error) => (e.name === 'TimeoutError' ? 'no answer in time' : e.message)
  // One signal for the whole exchange: a server that sends headers and then trickles is cut too.
  const signal = AbortSignal.timeout(timeoutMs)
  let res: Response
  try {
    res = await fetch(url, { ...init, redirect: 'error', signal })
  } catch (err) {
    throw apiFailure(attestor, what, `${url} did not answer (${why(err as Error)})`, err)
  }
  let text: string
  try {
    text = await readCapped(res, maxBytes, (m, cause) => apiFailure(attestor, what, m, cause))
  } catch (err) {
    if (err instanceof CloudAttestationError) throw err
    throw apiFailure(attestor, what, why(err as Error), err)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, json, text }
}

/** An access token and when to stop using it (ms since the epoch). */
export interface AccessToken {
  readonly value: string
  readonly until: number
}

/**
 * Caches one access token until shortly before it expires; concurrent attestations share one
 * exchange. `drop()` forgets a token the API refused (revoked, rotated).
 */
export class TokenCache {
  private token: AccessToken | undefined
  private pending: Promise<string> | undefined
  private readonly exchange: (now: number) => Promise<AccessToken>

  constructor(exchange: (now: number) => Promise<AccessToken>) {
    this.exchange = exchange
  }

  get cached(): boolean {
    return this.token !== undefined
  }

  async get(now: number): Promise<string> {
    if (this.token && now < this.token.until) return this.token.value
    this.pending ??= this.exchange(now)
      .then((t) => {
        this.token = t
        return t.value
      })
      .finally(() => {
        this.pending = undefined
      })
    return this.pending
  }

  /**
   * Forgets `refused` if it is still the cached token. A lookup that left with the old token and
   * hears of its refusal late must not drop the fresh one others exchanged meanwhile (each late
   * 401 cost another exchange: a storm of them under load, which AAD and Google throttle).
   */
  drop(refused: string): void {
    if (this.token?.value === refused) this.token = undefined
  }
}

/** A token's use-until time: a minute before it expires, the lifetime bounded to [0, max] s. */
export function tokenUntil(now: number, expiresIn: unknown, maxSeconds = 3600): number {
  const n = typeof expiresIn === 'string' ? Number(expiresIn) : expiresIn
  const ttl = typeof n === 'number' && Number.isFinite(n) && n > 0 ? Math.min(n, maxSeconds) : 300
  return now + Math.max(ttl - 60, 0) * 1000
}

/** An access_token field that is a plausible bearer token, or undefined. */
export function accessTokenOf(json: unknown): string | undefined {
  const t = (json as { access_token?: unknown } | undefined)?.access_token
  return typeof t === 'string' && t !== '' && t.length <= 16 * 1024 ? t : undefined
}
