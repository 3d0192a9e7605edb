/**
 * The gcp_iit server's optional Compute Engine lookup (SPIRE's use_instance_metadata): an OAuth2
 * access token from Application Default Credentials (credentials.ts), then
 * compute.instances.get for the attested instance. From its answer come SPIRE's tag:, sa:,
 * label: and metadata: selectors. Ours are the bounds (a deadline over each exchange, 1 MiB per
 * answer) and the fail-closed rule: configured, no answer, no attestation. No Google client
 * library: two JSON calls are all it takes.
 */
import type { Selector } from '../../types.js'
import { apiCall, apiFailure, TokenCache } from '../api.js'
import { CloudAttestationError } from '../common.js'
import { exchangeToken, type GcpCredentials } from './credentials.js'
import { GCP_IIT } from './protocol.js'

export const DEFAULT_COMPUTE_ENDPOINT = 'https://compute.googleapis.com'
const MAX_TAGS = 64
const MAX_LABELS = 64
const MAX_SERVICE_ACCOUNTS = 16
const MAX_METADATA_SELECTORS = 64

export interface GcpApiConfig {
  readonly credentials: GcpCredentials
  readonly computeEndpoint: string
  readonly timeoutMs: number
  readonly allowedLabelKeys: ReadonlySet<string>
  readonly allowedMetadataKeys: ReadonlySet<string>
  readonly maxMetadataValueSize: number
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
  private readonly tokens: TokenCache

  constructor(cfg: GcpApiConfig) {
    this.cfg = cfg
    this.tokens = new TokenCache((now) => exchangeToken(cfg.credentials, now, cfg.timeoutMs))
  }

  private fail(what: string, why: string, cause?: unknown): never {
    throw apiFailure(GCP_IIT, what, why, cause)
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
    let used = ''
    const get = async () => {
      used = await this.tokens.get(now)
      return apiCall(
        GCP_IIT,
        what,
        url,
        { headers: { Authorization: `Bearer ${used}`, Accept: 'application/json' } },
        this.cfg.timeoutMs,
      )
    }
    const cached = this.tokens.cached
    let r = await get()
    // A cached token the API no longer takes (revoked, the key rotated): one fresh exchange.
    if (r.status === 401) {
      this.tokens.drop(used)
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
    if (r.status === 401) this.tokens.drop(used)
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
