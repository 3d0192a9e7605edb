/**
 * `[server.federation]`: SPIRE's federation block in TOML. The bundle endpoint we serve, and the
 * trust domains we federate with (URL, profile and trust domain are all configured: the spec
 * forbids inferring the trust domain or profile from the URL).
 */
import { isIP } from 'node:net'
import { type ConfigReader, checkTrustDomain, type Table } from '../../common/config.js'
import { SpiffeEdgeError } from '../../errors.js'
import { SpiffeId, TrustDomain } from '../../spiffe/id.js'

export type EndpointProfile =
  | { readonly type: 'https_spiffe' }
  | {
      readonly type: 'https_web'
      readonly certFile: string
      readonly keyFile: string
      /** Re-read cert_file/key_file this often (SPIRE's file_sync_interval, default 1h). */
      readonly fileSyncIntervalSeconds: number
    }

export interface BundleEndpointConfig {
  readonly address: string
  readonly port: number
  /** spiffe_refresh_hint we publish, seconds (SPIRE default 5m). */
  readonly refreshHintSeconds: number
  readonly profile: EndpointProfile
}

export type RelationshipProfile =
  | { readonly type: 'https_spiffe'; readonly endpointSpiffeId: string }
  | { readonly type: 'https_web' }

export interface FederationRelationship {
  readonly trustDomain: string
  readonly bundleEndpointUrl: string
  readonly profile: RelationshipProfile
}

export interface FederationConfig {
  readonly bundleEndpoint: BundleEndpointConfig | undefined
  readonly federatesWith: readonly FederationRelationship[]
}

/** At most this many relationships: each is a timer and an outbound fetch. */
export const MAX_RELATIONSHIPS = 256

export function federationConfig(
  r: ConfigReader,
  server: Table | undefined,
  ownTrustDomain: string,
): FederationConfig {
  const f = r.table(server ?? {}, 'federation', 'server.federation')
  r.known(f, ['bundle_endpoint', 'federates_with'], 'server.federation')
  return {
    bundleEndpoint: bundleEndpoint(r, f),
    federatesWith: relationships(r, f, ownTrustDomain),
  }
}

function bundleEndpoint(r: ConfigReader, f: Table | undefined): BundleEndpointConfig | undefined {
  const path = 'server.federation.bundle_endpoint'
  const be = r.table(f ?? {}, 'bundle_endpoint', path)
  if (!be) return undefined
  r.known(
    be,
    ['address', 'port', 'refresh_hint', 'profile', 'cert_file', 'key_file', 'file_sync_interval'],
    path,
  )
  const address = r.string(be, 'address', path, '0.0.0.0')!
  if (isIP(address) === 0 && address !== 'localhost')
    r.problems.push(`${path}.address: '${address}' is not an IP address`)
  const type = r.string(be, 'profile', path, 'https_spiffe')
  let profile: EndpointProfile = { type: 'https_spiffe' }
  if (type === 'https_web') {
    profile = {
      type: 'https_web',
      certFile: r.path(be, 'cert_file', path) ?? '',
      keyFile: r.path(be, 'key_file', path) ?? '',
      fileSyncIntervalSeconds: r.duration(be, 'file_sync_interval', path, 3600),
    }
    if (profile.fileSyncIntervalSeconds < 1)
      r.problems.push(`${path}.file_sync_interval: at least 1s`)
  } else if (type !== 'https_spiffe') {
    r.problems.push(`${path}.profile: must be https_spiffe or https_web`)
  } else if (
    be.cert_file !== undefined ||
    be.key_file !== undefined ||
    be.file_sync_interval !== undefined
  ) {
    r.problems.push(
      `${path}: cert_file/key_file/file_sync_interval apply to profile https_web only`,
    )
  }
  return {
    address,
    port: r.int(be, 'port', path, 8443, 0, 65535),
    refreshHintSeconds: r.duration(be, 'refresh_hint', path, 300),
    profile,
  }
}

function relationships(
  r: ConfigReader,
  f: Table | undefined,
  ownTrustDomain: string,
): FederationRelationship[] {
  const fw = r.table(f ?? {}, 'federates_with', 'server.federation.federates_with')
  const out: FederationRelationship[] = []
  const names = Object.keys(fw ?? {})
  if (names.length > MAX_RELATIONSHIPS)
    r.problems.push(`server.federation.federates_with: more than ${MAX_RELATIONSHIPS} entries`)
  for (const td of names.slice(0, MAX_RELATIONSHIPS)) {
    const path = `server.federation.federates_with."${td}"`
    checkTrustDomain(r, td, path)
    if (td === ownTrustDomain) r.problems.push(`${path}: cannot federate with our own trust domain`)
    const t = r.table(fw!, td, path)
    if (!t) continue
    r.known(t, ['bundle_endpoint_url', 'bundle_endpoint_profile'], path)
    const url = r.string(t, 'bundle_endpoint_url', path) ?? ''
    checkUrl(r, url, `${path}.bundle_endpoint_url`)
    const p = r.table(t, 'bundle_endpoint_profile', `${path}.bundle_endpoint_profile`, true)
    r.known(p, ['type', 'endpoint_spiffe_id'], `${path}.bundle_endpoint_profile`)
    const type = r.string(p, 'type', `${path}.bundle_endpoint_profile`)
    if (type === 'https_spiffe') {
      const id = r.string(p, 'endpoint_spiffe_id', `${path}.bundle_endpoint_profile`) ?? ''
      try {
        SpiffeId.parse(id)
      } catch {
        r.problems.push(`${path}.bundle_endpoint_profile.endpoint_spiffe_id: not a SPIFFE ID`)
      }
      out.push({
        trustDomain: td,
        bundleEndpointUrl: url,
        profile: { type, endpointSpiffeId: id },
      })
    } else if (type === 'https_web') {
      if (p?.endpoint_spiffe_id !== undefined)
        r.problems.push(`${path}.bundle_endpoint_profile: endpoint_spiffe_id is for https_spiffe`)
      out.push({ trustDomain: td, bundleEndpointUrl: url, profile: { type } })
    } else if (type !== undefined) {
      r.problems.push(`${path}.bundle_endpoint_profile.type: must be https_spiffe or https_web`)
    }
  }
  return out
}

/** Federation spec 5.2.1: scheme https, no userinfo. */
function checkUrl(r: ConfigReader, url: string, path: string): void {
  const p = urlProblem(url)
  if (p) r.problems.push(`${path}: ${p}`)
}

/** At most this long: a URL is a host and a path, not a payload. */
const MAX_URL_LENGTH = 2048

export function urlProblem(url: string): string | undefined {
  if (url.length > MAX_URL_LENGTH) return `longer than ${MAX_URL_LENGTH} characters`
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return 'not a URL'
  }
  if (u.protocol !== 'https:') return 'must be an https URL'
  if (u.username !== '' || u.password !== '') return 'must not carry userinfo'
  return undefined
}

/**
 * A relationship from the admin API (`federation create|update`), checked as the config file's
 * are; every problem is named in one ERR_USAGE.
 */
export function checkRelationship(
  input: {
    readonly trustDomain: unknown
    readonly bundleEndpointUrl: unknown
    readonly profile: unknown
    readonly endpointSpiffeId?: unknown
  },
  ownTrustDomain: string,
): FederationRelationship {
  const problems: string[] = []
  const str = (v: unknown) => (typeof v === 'string' ? v : '')
  let td = str(input.trustDomain).replace(/^spiffe:\/\//, '')
  try {
    td = TrustDomain.parse(td).name
  } catch {
    problems.push(`trust domain '${str(input.trustDomain)}' is not a trust domain name`)
  }
  if (td === ownTrustDomain) problems.push('cannot federate with our own trust domain')
  const url = str(input.bundleEndpointUrl)
  const up = url === '' ? 'is required' : urlProblem(url)
  if (up) problems.push(`bundle endpoint URL ${up}`)
  const id = str(input.endpointSpiffeId)
  let profile: RelationshipProfile | undefined
  if (input.profile === 'https_spiffe') {
    try {
      SpiffeId.parse(id)
      profile = { type: 'https_spiffe', endpointSpiffeId: id }
    } catch {
      problems.push(
        id === ''
          ? "endpoint SPIFFE ID is required for profile 'https_spiffe'"
          : `endpoint SPIFFE ID '${id}' is not a SPIFFE ID`,
      )
    }
  } else if (input.profile === 'https_web') {
    if (id !== '') problems.push("endpoint SPIFFE ID is only for profile 'https_spiffe'")
    profile = { type: 'https_web' }
  } else {
    problems.push(
      `unknown bundle endpoint profile '${str(input.profile)}' (https_web or https_spiffe)`,
    )
  }
  if (problems.length > 0 || !profile)
    throw new SpiffeEdgeError('ERR_USAGE', `federation relationship: ${problems.join('; ')}`, {
      remedy:
        'pass -trustDomain, -bundleEndpointURL https://…, -bundleEndpointProfile https_web|https_spiffe (and -endpointSpiffeID for https_spiffe)',
    })
  return { trustDomain: td, bundleEndpointUrl: url, profile }
}
