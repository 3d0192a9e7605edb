/**
 * The gcp_iit server's optional Compute Engine lookup (SPIRE's use_instance_metadata): an OAuth2
 * access token from a service-account key file (RFC 7523 JWT bearer grant, RS256 signed with jose,
 * sent to the file's token_uri), then compute.instances.get for the attested instance. From its
 * answer come SPIRE's tag:, sa:, label: and metadata: selectors. Ours are the bounds (a deadline
 * over each exchange, 1 MiB per answer) and the fail-closed rule: configured, no answer, no
 * attestation. No Google client library: two JSON calls are all it takes.
 */
import { readFileSync } from 'node:fs'
import { importPKCS8, SignJWT } from 'jose'
import type { Selector } from '../../types.js'
import { CloudAttestationError, readCapped } from '../common.js'
import { GCP_IIT } from './protocol.js'

export const DEFAULT_COMPUTE_ENDPOINT = 'https://compute.googleapis.com'
export const DEFAULT_API_TIMEOUT_MS = 10_000
/** An instance resource is a few KiB (metadata is at most 512 KiB); 1 MiB is far beyond it. */
export const MAX_GCP_ANSWER = 1024 * 1024
/** Read-only Compute access is all instances.get needs. */
const SCOPE = 'https://www.googleapis.com/auth/compute.readonly'
const GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
/** Google caps assertion lifetimes at an hour. */
const ASSERTION_SECONDS = 3600
const MAX_TAGS = 64
const MAX_LABELS = 64
const MAX_SERVICE_ACCOUNTS = 16
const MAX_METADATA_SELECTORS = 64

export interface ServiceAccountKey {
  readonly clientEmail: string
  readonly privateKeyId: string
  readonly privateKeyPem: string
  readonly tokenUri: string
  readonly file: string
}

export interface GcpApiConfig {
  readonly key: ServiceAccountKey
  readonly computeEndpoint: string
  readonly timeoutMs: number
  readonly allowedLabelKeys: ReadonlySet<string>
  readonly allowedMetadataKeys: ReadonlySet<string>
  readonly maxMetadataValueSize: number
}

/**
 * Bearer tokens travel to these URLs: https, or http only to this host (the simulator, a local
 * proxy). Returns a problem or undefined.
 */
export function insecureUrlProblem(what: string, url: string): string | undefined {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return `${what}: ${JSON.stringify(url)} is not a URL`
  }
  if (u.protocol === 'https:') return undefined
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)
  if (u.protocol === 'http:' && loopback) return undefined
  return `${what}: ${url} must be https (http only to the loopback address)`
}

/** The JSON key file `gcloud iam service-accounts keys create` writes; read at start, fail closed. */
export function readServiceAccountKey(file: string): ServiceAccountKey {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`)
  }
  if (typeof o !== 'object' || o === null) throw new Error(`${file}: not a JSON object`)
  if (o.type !== 'service_account')
    throw new Error(`${file}: type is ${JSON.stringify(o.type)}, not "service_account"`)
  const field = (k: string): string => {
    const v = o[k]
    if (typeof v !== 'string' || v === '') throw new Error(`${file}: ${k} is missing`)
    return v
  }
  const tokenUri =
    typeof o.token_uri === 'string' ? o.token_uri : 'https://oauth2.googleapis.com/token'
  const bad = insecureUrlProblem('token_uri', tokenUri)
  if (bad) throw new Error(`${file}: ${bad}`)
  return {
    clientEmail: field('client_email'),
    privateKeyId: field('private_key_id'),
    privateKeyPem: field('private_key'),
    tokenUri,
    file,
  }
}

interface Instance {
  id?: unknown
  name?: unknown
  tags?: { items?: unknown }
  labels?: unknown
  metadata?: { items?: unknown }
  serviceAccounts?: unknown
}

const strings = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []

export class GcpApi {
  readonly cfg: GcpApiConfig
  private token: { value: string; until: number } | undefined
  private pending: Promise<string> | undefined

  constructor(cfg: GcpApiConfig) {
    this.cfg = cfg
  }

  private fail(what: string, why: string, cause?: unknown): never {
    throw new CloudAttestationError(GCP_IIT, 'api', `${what}: ${why}`.slice(0, 500), cause)
  }

  /** One bounded exchange: deadline over connect, headers and body; no redirects followed. */
  private async call(
    what: string,
    url: string,
    init: RequestInit,
  ): Promise<{ status: number; json: unknown; text: string }> {
    let res: Response
    try {
      res = await fetch(url, {
        ...init,
        redirect: 'error',
        signal: AbortSignal.timeout(this.cfg.timeoutMs),
      })
    } catch (err) {
      const e = err as Error
      const why = e.name === 'TimeoutError' ? 'no answer in time' : e.message
      this.fail(what, `${url} did not answer (${why})`, err)
    }
    let text: string
    try {
      text = await readCapped(
        res,
        MAX_GCP_ANSWER,
        (m, cause) => new CloudAttestationError(GCP_IIT, 'api', `${what}: ${m}`, cause),
      )
    } catch (err) {
      if (err instanceof CloudAttestationError) throw err
      const e = err as Error
      this.fail(what, e.name === 'TimeoutError' ? 'no answer in time' : e.message, err)
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = undefined
    }
    return { status: res.status, json, text }
  }

  /** The access token, cached until a minute before it expires; one exchange at a time. */
  private async accessToken(now: number): Promise<string> {
    if (this.token && now < this.token.until) return this.token.value
    this.pending ??= this.exchange(now).finally(() => {
      this.pending = undefined
    })
    return this.pending
  }

  private async exchange(now: number): Promise<string> {
    const k = this.cfg.key
    const what = `OAuth2 token exchange for ${k.clientEmail} at ${k.tokenUri}`
    let assertion: string
    try {
      const iat = Math.floor(now / 1000)
      assertion = await new SignJWT({ scope: SCOPE })
        .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: k.privateKeyId })
        .setIssuer(k.clientEmail)
        .setAudience(k.tokenUri)
        .setIssuedAt(iat)
        .setExpirationTime(iat + ASSERTION_SECONDS)
        .sign(await importPKCS8(k.privateKeyPem, 'RS256'))
    } catch (err) {
      this.fail(
        what,
        `signing the assertion with ${k.file} failed (${(err as Error).message})`,
        err,
      )
    }
    const r = await this.call(what, k.tokenUri, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: GRANT, assertion }).toString(),
    })
    const j = r.json as
      | {
          access_token?: unknown
          expires_in?: unknown
          error?: unknown
          error_description?: unknown
        }
      | undefined
    if (r.status !== 200) {
      const e =
        j && typeof j.error === 'string'
          ? `${j.error}: ${String(j.error_description ?? '')}`
          : r.text.slice(0, 200)
      this.fail(what, `HTTP ${r.status}: ${e}`)
    }
    if (
      typeof j?.access_token !== 'string' ||
      j.access_token === '' ||
      j.access_token.length > 8192
    )
      this.fail(what, 'the answer has no access_token')
    const ttl =
      typeof j.expires_in === 'number' && j.expires_in > 0 ? Math.min(j.expires_in, 3600) : 300
    this.token = { value: j.access_token, until: now + Math.max(ttl - 60, 0) * 1000 }
    return j.access_token
  }

  /** compute.instances.get for the instance the token names (by name, as SPIRE asks). */
  async instance(
    project: string,
    zone: string,
    name: string,
    id: string,
    now: number,
  ): Promise<Instance> {
    const path = [project, zone, name].map(encodeURIComponent)
    const url = `${this.cfg.computeEndpoint}/compute/v1/projects/${path[0]}/zones/${path[1]}/instances/${path[2]}`
    const what = `Compute instances.get ${project}/${zone}/${name}`
    const get = async () =>
      this.call(what, url, {
        headers: {
          Authorization: `Bearer ${await this.accessToken(now)}`,
          Accept: 'application/json',
        },
      })
    const cached = this.token !== undefined
    let r = await get()
    // A cached token the API no longer takes (revoked, the key rotated): one fresh exchange.
    if (r.status === 401) {
      this.token = undefined
      if (cached) r = await get()
    }
    const err = (r.json as { error?: { message?: unknown; status?: unknown } } | undefined)?.error
    const message =
      typeof err?.message === 'string' ? err.message.slice(0, 300) : r.text.slice(0, 200)
    if (r.status === 404)
      throw new CloudAttestationError(
        GCP_IIT,
        'instance',
        `${what}: the API knows no such instance (${message})`,
      )
    if (r.status === 401) this.token = undefined
    if (r.status !== 200) this.fail(what, `HTTP ${r.status}: ${message}`)
    const i = r.json as Instance | undefined
    if (typeof i !== 'object' || i === null) this.fail(what, 'the answer is not a JSON object')
    // A name can be reused after a deletion: the labels must be this instance's, not a successor's.
    if (String(i.id) !== id)
      throw new CloudAttestationError(
        GCP_IIT,
        'instance',
        `${what}: the API's instance has ID ${JSON.stringify(i.id)}, the token names ${id} (deleted and recreated?)`,
      )
    return i
  }

  /** SPIRE's instance selectors: tag:, sa:, label:<k>:<v> and metadata:<k>:<v> (allowed keys only). */
  async selectors(
    project: string,
    zone: string,
    name: string,
    id: string,
    now: number,
  ): Promise<Selector[]> {
    const i = await this.instance(project, zone, name, id, now)
    const cfg = this.cfg
    const tags = strings(i.tags?.items)
    const sas = (Array.isArray(i.serviceAccounts) ? i.serviceAccounts : [])
      .map((s) => (s as { email?: unknown }).email)
      .filter((e): e is string => typeof e === 'string')
    const labels =
      typeof i.labels === 'object' && i.labels !== null
        ? Object.entries(i.labels as Record<string, unknown>)
        : []
    const items = Array.isArray(i.metadata?.items)
      ? (i.metadata.items as { key?: unknown; value?: unknown }[])
      : []
    if (tags.length > MAX_TAGS || labels.length > MAX_LABELS || sas.length > MAX_SERVICE_ACCOUNTS)
      this.fail(
        `Compute instances.get ${project}/${zone}/${name}`,
        `${tags.length} tags, ${labels.length} labels, ${sas.length} service accounts: over ${MAX_TAGS}/${MAX_LABELS}/${MAX_SERVICE_ACCOUNTS}`,
      )
    const out: Selector[] = []
    const add = (value: string) => out.push({ type: GCP_IIT, value })
    for (const t of tags) add(`tag:${t}`)
    for (const s of sas) add(`sa:${s}`)
    for (const [k, v] of labels)
      if (cfg.allowedLabelKeys.has(k) && typeof v === 'string') add(`label:${k}:${v}`)
    let md = 0
    for (const item of items) {
      if (typeof item?.key !== 'string' || !cfg.allowedMetadataKeys.has(item.key)) continue
      const value = typeof item.value === 'string' ? item.value : ''
      // SPIRE's rule: an allowed key whose value is too long refuses (it is not silently dropped).
      if (Buffer.byteLength(value) > cfg.maxMetadataValueSize)
        throw new CloudAttestationError(
          GCP_IIT,
          'instance',
          `metadata ${JSON.stringify(item.key)} is ${Buffer.byteLength(value)} bytes, over max_metadata_value_size ${cfg.maxMetadataValueSize}`,
        )
      if (++md > MAX_METADATA_SELECTORS)
        this.fail('Compute instances.get', `over ${MAX_METADATA_SELECTORS} allowed metadata items`)
      add(`metadata:${item.key}:${value}`)
    }
    return out
  }
}
