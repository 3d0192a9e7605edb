/**
 * The OIDC discovery provider's config (`spiffe-edge oidc run --config FILE`), SPIRE's
 * oidc-discovery-provider keys in our TOML shape:
 *
 *   [oidc]
 *   domains = ["oidc.example.org"]          # Host headers answered (required, SPIRE's `domains`)
 *   jwt_issuer = "https://oidc.example.org" # optional: else https://<Host of the request>
 *   bind_address = "0.0.0.0"; bind_port = 8443
 *   cert_file = "tls.crt"; key_file = "tls.key"  # HTTPS (SPIRE's serving_cert_file)
 *   insecure_http = false                    # plain HTTP, loopback bind only (a TLS proxy in front)
 *   cache_max_age = "5m"; poll_interval = "10s"
 *   [oidc.workload_api]  socket_path = "...", trust_domain = "example.org"
 *   [oidc.server_api]    admin_socket = "..."   (exactly one of the two)
 */
import { isIP } from 'node:net'
import { openConfig, readConfigFile, type Table } from '../../common/config.js'
import type { LogConfig } from '../../common/log.js'
import { jwtIssuerProblem } from '../../server/config.js'
import { TrustDomain } from '../../spiffe/id.js'

export type OidcSource =
  | { readonly kind: 'workload_api'; readonly socketPath: string; readonly trustDomain: string }
  | { readonly kind: 'server_api'; readonly adminSocket: string; readonly trustDomain?: string }

export interface OidcConfig {
  /** Lower-case host names (no port) the provider answers for. */
  readonly domains: readonly string[]
  readonly jwtIssuer?: string | undefined
  readonly bindAddress: string
  readonly bindPort: number
  readonly tls?: { readonly certFile: string; readonly keyFile: string } | undefined
  readonly insecureHttp: boolean
  readonly cacheMaxAgeSeconds: number
  readonly pollIntervalSeconds: number
  readonly source: OidcSource
  readonly log: LogConfig
}

const KEYS = [
  'domains',
  'jwt_issuer',
  'bind_address',
  'bind_port',
  'cert_file',
  'key_file',
  'insecure_http',
  'cache_max_age',
  'poll_interval',
  'log_level',
  'log_format',
  'log_file',
  'workload_api',
  'server_api',
] as const

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost'])
/** RFC 1123 host names (what a Host header may carry besides an IP). */
const HOSTNAME =
  /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

export function parseOidcConfig(text: string, source: string): OidcConfig {
  const { r, main: o } = openConfig(text, source, 'oidc', KEYS)
  const rawDomains = o?.domains
  const domains: string[] = []
  if (!Array.isArray(rawDomains) || rawDomains.length === 0) {
    r.problems.push('oidc.domains: required, a non-empty list of host names (the allowlist)')
  } else if (rawDomains.length > 64) {
    r.problems.push('oidc.domains: at most 64 names')
  } else {
    for (const d of rawDomains) {
      const name = typeof d === 'string' ? d.toLowerCase() : ''
      if (!HOSTNAME.test(name) && isIP(name) === 0) {
        r.problems.push(
          `oidc.domains: ${JSON.stringify(d)} is not a host name (no port, no scheme)`,
        )
      } else domains.push(name)
    }
  }
  const jwtIssuer = r.optionalString(o, 'jwt_issuer', 'oidc')
  if (jwtIssuer !== undefined) {
    const problem = jwtIssuerProblem(jwtIssuer)
    if (problem) r.problems.push(`oidc.jwt_issuer: ${problem}`)
  }
  const bindAddress = r.string(o, 'bind_address', 'oidc', '127.0.0.1')!
  if (isIP(bindAddress) === 0 && bindAddress !== 'localhost') {
    r.problems.push(`oidc.bind_address: '${bindAddress}' is not an IP address`)
  }
  const insecureHttp = r.bool(o, 'insecure_http', 'oidc', false)
  const certFile = r.path(o, 'cert_file', 'oidc', '')
  const keyFile = r.path(o, 'key_file', 'oidc', '')
  const hasCert = o?.cert_file !== undefined
  const hasKey = o?.key_file !== undefined
  let tls: OidcConfig['tls']
  if (insecureHttp) {
    if (hasCert || hasKey)
      r.problems.push('oidc.insecure_http: set it or cert_file/key_file, not both')
    // Relying parties fetch keys over https only; plain HTTP is for a TLS proxy on the same host.
    if (!LOOPBACK.has(bindAddress)) {
      r.problems.push('oidc.insecure_http: only with a loopback bind_address (127.0.0.1 or ::1)')
    }
  } else if (hasCert && hasKey) {
    tls = { certFile: certFile!, keyFile: keyFile! }
  } else {
    r.problems.push('oidc: set cert_file and key_file (HTTPS), or insecure_http = true on loopback')
  }
  const sourceOf = (): OidcSource => {
    const wl = r.table(o ?? {}, 'workload_api', 'oidc.workload_api')
    const sa = r.table(o ?? {}, 'server_api', 'oidc.server_api')
    if ((wl === undefined) === (sa === undefined)) {
      r.problems.push('oidc: configure exactly one of [oidc.workload_api] and [oidc.server_api]')
      return { kind: 'server_api', adminSocket: '' }
    }
    if (wl) {
      r.known(wl, ['socket_path', 'trust_domain'], 'oidc.workload_api')
      const td = r.string(wl, 'trust_domain', 'oidc.workload_api') ?? ''
      checkTd(r.problems, td, 'oidc.workload_api.trust_domain')
      return {
        kind: 'workload_api',
        socketPath: r.path(wl, 'socket_path', 'oidc.workload_api') ?? '',
        trustDomain: td,
      }
    }
    const s = sa as Table
    r.known(s, ['admin_socket'], 'oidc.server_api')
    return { kind: 'server_api', adminSocket: r.path(s, 'admin_socket', 'oidc.server_api') ?? '' }
  }
  const config: OidcConfig = {
    domains,
    jwtIssuer,
    bindAddress,
    bindPort: r.int(o, 'bind_port', 'oidc', 8443, 0, 65535),
    tls,
    insecureHttp,
    cacheMaxAgeSeconds: r.duration(o, 'cache_max_age', 'oidc', 300),
    pollIntervalSeconds: r.duration(o, 'poll_interval', 'oidc', 10),
    source: sourceOf(),
    log: r.log(o, 'oidc'),
  }
  r.done(source)
  return config
}

function checkTd(problems: string[], td: string, path: string): void {
  try {
    TrustDomain.parse(td)
  } catch {
    problems.push(`${path}: '${td}' is not a trust domain name`)
  }
}

export function loadOidcConfig(file: string): OidcConfig {
  return parseOidcConfig(readConfigFile(file), file)
}
