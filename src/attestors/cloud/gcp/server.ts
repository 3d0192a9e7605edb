/**
 * The gcp_iit server half: verifies the instance identity token (RS256 against Google's keys or a
 * configured JWKS), its issuer, audience and times, the project allowlist, and that the instance
 * has not attested before (SPIRE's rule: a token can be copied while it lives). Agent ID and
 * selectors are SPIRE's: spiffe://<td>/spire/agent/gcp_iit/<project>/<instance id>.
 */
import { resolve } from 'node:path'
import type { Table } from '../../../common/config.js'
import type { Selector, ServerNodeAttestor } from '../../types.js'
import { DEFAULT_API_TIMEOUT_MS, insecureUrlProblem } from '../api.js'
import {
  type AttestedLookup,
  CloudAttestationError,
  checkFirstUse,
  idSegment,
  PluginConfig,
} from '../common.js'
import { type KeyResolver, keyResolver, verifyJwt } from '../jwt.js'
import { DEFAULT_COMPUTE_ENDPOINT, GcpApi, type GcpApiConfig } from './compute.js'
import { describeCredentials, findCredentials } from './credentials.js'
import {
  DEFAULT_AUDIENCE,
  GCP_IIT,
  GOOGLE_ISSUERS,
  GOOGLE_JWKS_URL,
  parseGcpPayload,
} from './protocol.js'

export interface GcpServerConfig {
  readonly projects: ReadonlySet<string>
  readonly audience: string
  readonly keys: KeyResolver
  readonly tofu: boolean
  /** use_instance_metadata: Compute Engine lookups for tag:, sa:, label:, metadata: selectors. */
  readonly api?: GcpApiConfig
}

/** SPIRE's default for max_metadata_value_size. */
const DEFAULT_MAX_METADATA_VALUE_SIZE = 128

/** GCP project IDs; legacy domain-scoped ones (example.com:p) cannot be a SPIFFE ID segment. */
const PROJECT = /^[a-z][a-z0-9-]{4,28}[a-z0-9]$/

export function parseGcpServerConfig(
  raw: Table,
  baseDir: string,
  env: NodeJS.ProcessEnv = process.env,
): GcpServerConfig {
  const c = new PluginConfig(`plugins.NodeAttestor.${GCP_IIT}`, raw, [
    'projectid_allow_list',
    'audience',
    'jwks_file',
    'jwks_url',
    'tofu',
    'use_instance_metadata',
    'service_account_file',
    'allowed_label_keys',
    'allowed_metadata_keys',
    'max_metadata_value_size',
    'compute_endpoint',
    'gce_metadata_url',
    'api_timeout_ms',
  ])
  const projects = new Set(c.strings('projectid_allow_list', PROJECT, true))
  const audience = c.string('audience') ?? DEFAULT_AUDIENCE
  const file = c.string('jwks_file')
  const url = c.url('jwks_url')
  if (file && url) c.problems.push('jwks_file and jwks_url: set one')
  let keys: KeyResolver | undefined
  try {
    keys = keyResolver(file ? { file: resolve(baseDir, file) } : { url: url ?? GOOGLE_JWKS_URL })
  } catch (err) {
    c.problems.push(`jwks_file: ${(err as Error).message}`)
  }
  const tofu = c.bool('tofu', true)
  const api = parseApi(c, baseDir, env)
  c.done()
  return { projects, audience, keys: keys!, tofu, ...(api ? { api } : {}) }
}

/** GCE label keys and metadata keys: lowercase/ASCII words, at most 128 characters. */
const KEY = /^[A-Za-z0-9_-]{1,128}$/

function parseApi(
  c: PluginConfig,
  baseDir: string,
  env: NodeJS.ProcessEnv,
): GcpApiConfig | undefined {
  const on = c.bool('use_instance_metadata', false)
  const fileKey = c.string('service_account_file')
  const metadataUrl = c.url('gce_metadata_url')
  const labels = new Set(c.strings('allowed_label_keys', KEY, false))
  const metadata = new Set(c.strings('allowed_metadata_keys', KEY, false))
  const maxValue = c.int('max_metadata_value_size', DEFAULT_MAX_METADATA_VALUE_SIZE, 256 * 1024)
  const endpoint = c.url('compute_endpoint') ?? DEFAULT_COMPUTE_ENDPOINT
  const bad = insecureUrlProblem('compute_endpoint', endpoint)
  if (bad) c.problems.push(bad)
  const timeoutMs =
    c.int('api_timeout_ms', DEFAULT_API_TIMEOUT_MS, 120_000) || DEFAULT_API_TIMEOUT_MS
  if (!on) {
    for (const k of [
      'service_account_file',
      'gce_metadata_url',
      'allowed_label_keys',
      'allowed_metadata_keys',
    ])
      if (c.has(k)) c.problems.push(`${k}: needs use_instance_metadata = true`)
    return undefined
  }
  // SPIRE falls back to Application Default Credentials; so do we, in Google's order.
  try {
    return {
      credentials: findCredentials(fileKey, metadataUrl, baseDir, env),
      computeEndpoint: endpoint,
      timeoutMs,
      allowedLabelKeys: labels,
      allowedMetadataKeys: metadata,
      maxMetadataValueSize: maxValue || DEFAULT_MAX_METADATA_VALUE_SIZE,
    }
  } catch (err) {
    c.problems.push(`use_instance_metadata credentials: ${(err as Error).message}`)
    return undefined
  }
}

export function describeGcpApi(cfg: GcpApiConfig): string {
  return `${describeCredentials(cfg.credentials)}, Compute at ${cfg.computeEndpoint}`
}

interface ComputeEngine {
  project_id?: unknown
  zone?: unknown
  instance_id?: unknown
  instance_name?: unknown
}

export function gcpServerAttestor(
  cfg: GcpServerConfig,
  attested: AttestedLookup,
): ServerNodeAttestor {
  const api = cfg.api ? new GcpApi(cfg.api) : undefined
  return {
    kind: 'NodeAttestor',
    name: GCP_IIT,
    async attest(payload, _challenge, ctx) {
      const { token } = parseGcpPayload(payload)
      const claims = await verifyJwt(GCP_IIT, token, cfg.keys, {
        issuer: GOOGLE_ISSUERS,
        audience: cfg.audience,
        now: ctx.now,
      })
      const google = claims.google as { compute_engine?: ComputeEngine } | undefined
      const ce = google?.compute_engine
      if (typeof ce !== 'object' || ce === null) {
        throw new CloudAttestationError(
          GCP_IIT,
          'claims',
          'the token has no google.compute_engine claims: request it with format=full',
        )
      }
      const project = idSegment(GCP_IIT, 'project_id', ce.project_id)
      if (!cfg.projects.has(project)) {
        throw new CloudAttestationError(
          GCP_IIT,
          'project',
          `project ${project} is not in projectid_allow_list`,
        )
      }
      const instanceId = idSegment(GCP_IIT, 'instance_id', ce.instance_id)
      const zone = idSegment(GCP_IIT, 'zone', ce.zone)
      const name = idSegment(GCP_IIT, 'instance_name', ce.instance_name)
      const agentPath = `/spire/agent/${GCP_IIT}/${project}/${instanceId}`
      await checkFirstUse(GCP_IIT, attested, ctx.trustDomain, agentPath, cfg.tofu)
      const selectors: Selector[] = [
        { type: GCP_IIT, value: `project-id:${project}` },
        { type: GCP_IIT, value: `zone:${zone}` },
        { type: GCP_IIT, value: `instance-name:${name}` },
      ]
      if (typeof claims.email === 'string' && claims.email.length <= 256) {
        selectors.push({ type: GCP_IIT, value: `sa:${claims.email}` })
      }
      // After the token, project and first-use checks, so a refused token costs no API call.
      if (api) {
        const seen = new Set(selectors.map((s) => s.value))
        for (const s of await api.selectors(project, zone, name, instanceId, ctx.now.getTime()))
          if (!seen.has(s.value)) {
            seen.add(s.value)
            selectors.push(s)
          }
      }
      return { agentPath, selectors, canReattest: false }
    },
  }
}
