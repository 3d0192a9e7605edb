/**
 * Shared parts of the cloud node attestors (aws_iid, gcp_iit, azure_msi): the refusal type with
 * stable reasons, the bounded metadata-service client the agent halves use, strict JSON payload
 * parsing for the server halves, config helpers and the trust-on-first-use check.
 */
import { ConfigError, type Table } from '../../common/config.js'
import { SpiffeEdgeError } from '../../errors.js'

/** Why a cloud attestation was refused: stable values tests and operators can match on. */
export type CloudAttestReason =
  | 'payload'
  | 'signature'
  | 'expired'
  | 'audience'
  | 'issuer'
  | 'account'
  | 'project'
  | 'tenant'
  | 'replay'
  | 'claims'
  | 'api'
  | 'instance'

const REMEDIES: Readonly<Record<CloudAttestReason, string>> = {
  payload: 'the agent sent malformed evidence: upgrade or fix the agent',
  signature:
    'the evidence is not signed by a trusted key: check the configured certificates or JWKS',
  expired: 'the evidence is too old or not yet valid: check the node clock and attest again',
  audience: 'configure the agent and server with the same audience / resource',
  issuer: 'the token was issued by another issuer than the one configured',
  account: 'add the AWS account to account_ids on the server',
  project: 'add the GCP project to projectid_allow_list on the server',
  tenant: 'add the Azure tenant to [tenants] on the server',
  replay:
    'this instance already attested: evict the agent (server agent evict) to let it attest again',
  claims: 'the evidence lacks claims the attestor needs: check the instance and the request',
  api: "the cloud API did not answer or refused the server's credentials: check the credentials, their permissions (docs/attestors/cloud.md) and the API endpoint",
  instance:
    'the cloud API does not confirm the instance the evidence names: check that it still exists and was not tampered with',
}

export class CloudAttestationError extends SpiffeEdgeError {
  readonly reason: CloudAttestReason

  constructor(attestor: string, reason: CloudAttestReason, message: string, cause?: unknown) {
    // An API failure is the server's problem, not the node's: its own code, still a refusal.
    const code = reason === 'api' ? 'ERR_CLOUD_API' : 'ERR_ATTESTATION_FAILED'
    super(code, `${attestor} attestation refused [${reason}]: ${message}`, {
      remedy: REMEDIES[reason],
      cause,
      publicMessage: `${attestor} attestation refused [${reason}]`,
    })
    this.reason = reason
  }
}

/** Largest metadata answer we read: documents and tokens are a few KiB. */
export const MAX_METADATA_BYTES = 64 * 1024
export const DEFAULT_TIMEOUT_MS = 5000

export interface MetadataRequest {
  readonly url: string
  readonly method?: 'GET' | 'PUT'
  readonly headers?: Readonly<Record<string, string>>
  readonly timeoutMs?: number
  readonly maxBytes?: number
}

export interface MetadataResponse {
  readonly status: number
  readonly headers: Headers
  readonly body: string
}

function metadataError(what: string, message: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_CLOUD_METADATA', `${what}: ${message}`, {
    remedy:
      'run the agent on an instance of that cloud, or point metadata_url at the metadata service (spiffe-edge sim cloud … start)',
    cause,
  })
}

/**
 * A response body as UTF-8, at most max bytes (declared or counted); fail(message) makes the
 * caller's error. Written to be shared with the cloud API clients the GCP/Azure lookups will need.
 */
export async function readCapped(
  res: Response,
  max: number,
  fail: (message: string, cause?: unknown) => Error,
): Promise<string> {
  const declared = Number(res.headers.get('content-length') ?? '0')
  if (declared > max) {
    await res.body?.cancel().catch(() => undefined)
    throw fail(`answer of ${declared} bytes is over ${max}`)
  }
  const chunks: Uint8Array[] = []
  let size = 0
  let over = false
  try {
    for await (const chunk of res.body ?? []) {
      size += chunk.length
      if (size > max) {
        over = true
        break
      }
      chunks.push(chunk)
    }
  } catch (err) {
    await res.body?.cancel().catch(() => undefined)
    throw fail(`reading the answer failed (${(err as Error).message})`, err)
  }
  if (over) {
    await res.body?.cancel().catch(() => undefined)
    throw fail(`answer is over ${max} bytes`)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * One metadata-service call: a deadline over the whole exchange (connect, headers and body), at
 * most maxBytes read, redirects refused (a metadata service never redirects; following one could
 * send the session token elsewhere). Non-2xx answers are errors naming the status.
 */
export async function metadataCall(what: string, r: MetadataRequest): Promise<MetadataResponse> {
  const max = r.maxBytes ?? MAX_METADATA_BYTES
  const signal = AbortSignal.timeout(r.timeoutMs ?? DEFAULT_TIMEOUT_MS)
  let res: Response
  try {
    res = await fetch(r.url, {
      method: r.method ?? 'GET',
      headers: r.headers ?? {},
      redirect: 'error',
      signal,
    })
  } catch (err) {
    throw metadataError(what, `${r.url} did not answer (${(err as Error).message})`, err)
  }
  const body = await readCapped(res, max, (m, cause) =>
    metadataError(what, `reading ${r.url}: ${m}`, cause),
  )
  if (res.status < 200 || res.status > 299) {
    throw metadataError(what, `${r.url} answered ${res.status}: ${body.slice(0, 200)}`)
  }
  return { status: res.status, headers: res.headers, body }
}

/** Largest attestation payload a server half accepts (a document + signature, or a JWT). */
export const MAX_PAYLOAD = 32 * 1024

/** Strict JSON object parsing of an attestation payload: size, UTF-8, known keys, version 1. */
export function parseJsonPayload(
  attestor: string,
  bytes: Uint8Array,
  known: readonly string[],
): Record<string, unknown> {
  const fail = (why: string, cause?: unknown): never => {
    throw new CloudAttestationError(attestor, 'payload', why, cause)
  }
  if (bytes.length > MAX_PAYLOAD) fail(`payload is ${bytes.length} bytes, over ${MAX_PAYLOAD}`)
  let v: unknown
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    fail('payload is not JSON', err)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('payload is not a JSON object')
  const obj = v as Record<string, unknown>
  for (const k of Object.keys(obj)) if (!known.includes(k)) fail(`unknown field '${k}'`)
  if (obj.version !== 1) fail(`version is ${JSON.stringify(obj.version)}, this server speaks 1`)
  return obj
}

export function encodeJson(o: unknown): Uint8Array {
  return new Uint8Array(Buffer.from(JSON.stringify(o), 'utf8'))
}

/** The agent halves never get a challenge: the server attests from the first message. */
export function noChallenge(attestor: string): () => Promise<never> {
  return async () => {
    throw new SpiffeEdgeError(
      'ERR_ATTESTATION_FAILED',
      `the server challenged a ${attestor} attestation`,
      {
        remedy: 'the server is not a spiffe-edge server, or is misconfigured',
      },
    )
  }
}

/**
 * A path segment of an agent ID taken from signed evidence: only characters SPIFFE IDs allow and
 * nothing that could add a segment, so a claim cannot move the agent under another path.
 */
export function idSegment(attestor: string, what: string, v: unknown): string {
  if (typeof v !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(v)) {
    throw new CloudAttestationError(
      attestor,
      'claims',
      `${what} ${JSON.stringify(v)?.slice(0, 80)} is not a valid ID segment`,
    )
  }
  return v
}

/** Whether an agent ID is attested now (not evicted): the trust-on-first-use rule's memory. */
export type AttestedLookup = (spiffeId: string) => Promise<boolean>

/**
 * SPIRE's rule for evidence that does not change per attestation (a static identity document, a
 * bearer token that can be copied): an instance attests once; after an eviction it may again.
 */
export async function checkFirstUse(
  attestor: string,
  attested: AttestedLookup,
  trustDomain: string,
  agentPath: string,
  tofu: boolean,
): Promise<void> {
  if (!tofu) return
  if (await attested(`spiffe://${trustDomain}${agentPath}`)) {
    throw new CloudAttestationError(
      attestor,
      'replay',
      `spiffe://${trustDomain}${agentPath} has already attested`,
    )
  }
}

/** Reads a table's keys for one plugin, collecting every problem before failing. */
export class PluginConfig {
  readonly problems: string[] = []
  private readonly raw: Table
  private readonly source: string

  constructor(source: string, raw: Table, known: readonly string[]) {
    this.source = source
    this.raw = raw
    for (const k of Object.keys(raw))
      if (!known.includes(k)) this.problems.push(`${k}: unknown key`)
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined
  }

  string(key: string): string | undefined {
    const v = this.raw[key]
    if (v === undefined) return undefined
    if (typeof v !== 'string' || v === '') {
      this.problems.push(`${key}: must be a non-empty string`)
      return undefined
    }
    return v
  }

  url(key: string): string | undefined {
    const v = this.string(key)
    if (v === undefined) return undefined
    try {
      const u = new URL(v)
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)')
      return v.replace(/\/+$/, '')
    } catch {
      this.problems.push(`${key}: ${JSON.stringify(v)} is not an http(s) URL`)
      return undefined
    }
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.raw[key]
    if (v === undefined) return dflt
    if (typeof v !== 'boolean') {
      this.problems.push(`${key}: must be true or false`)
      return dflt
    }
    return v
  }

  /** A positive whole number of seconds (or milliseconds), bounded by max. */
  int(key: string, dflt: number, max: number): number {
    const v = this.raw[key]
    if (v === undefined) return dflt
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
      this.problems.push(`${key}: must be a whole number from 0 to ${max}`)
      return dflt
    }
    return v
  }

  strings(key: string, pattern: RegExp, required: boolean): string[] {
    const v = this.raw[key]
    if (v === undefined) {
      if (required) this.problems.push(`${key}: required (nothing is trusted without it)`)
      return []
    }
    if (!Array.isArray(v) || v.length === 0) {
      this.problems.push(`${key}: must be a non-empty array of strings`)
      return []
    }
    const out: string[] = []
    for (const x of v) {
      if (typeof x !== 'string' || !pattern.test(x))
        this.problems.push(`${key}: ${JSON.stringify(x)} is not valid`)
      else out.push(x)
    }
    return out
  }

  table(key: string): Table | undefined {
    const v = this.raw[key]
    if (v === undefined) return undefined
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.problems.push(`${key}: must be a table`)
      return undefined
    }
    return v as Table
  }

  done(): void {
    if (this.problems.length > 0) throw new ConfigError(this.source, this.problems)
  }
}
