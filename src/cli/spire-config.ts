/**
 * SPIRE's own server.conf / agent.conf (HCL) read as ours: HashiCorp's HCL parser (compiled to
 * WebAssembly in @cdktf/hcl2json) turns the file into JSON, and this maps SPIRE's keys onto our
 * TOML tables. What has no equivalent is listed, never dropped silently: `run` and `validate`
 * refuse a file with unmapped keys, `config convert` writes what maps and lists the rest.
 */
import { dirname, join } from 'node:path'
import { stringify } from 'smol-toml'
import { ConfigError } from '../common/config.js'

export type ConfigKind = 'server' | 'agent'
type Obj = Record<string, unknown>

export interface Converted {
  readonly kind: ConfigKind
  /** Our config as TOML text (parse it with the file's own path as source). */
  readonly toml: string
  /** SPIRE settings with no equivalent here: each one names the key and why. */
  readonly unmapped: readonly string[]
  /** Settings mapped with a difference worth knowing. */
  readonly notes: readonly string[]
}

/** SPIRE's files open with `server {` / `agent {` blocks (TOML would say `[server]`). */
export function looksLikeHcl(text: string): boolean {
  return /^\s*(server|agent|plugins|health_checks|telemetry)\s*\{/m.test(text)
}

/** SPIRE's -expandEnv: $VAR and ${VAR} from the environment; an unset one is a config error. */
export function expandEnv(text: string, env: NodeJS.ProcessEnv, source: string): string {
  const missing = new Set<string>()
  const out = text.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (_m, a, b) => {
      const name = (a ?? b) as string
      const v = env[name]
      if (v === undefined) missing.add(name)
      return v ?? ''
    },
  )
  if (missing.size > 0)
    throw new ConfigError(
      source,
      [...missing].map((n) => `-expandEnv: $${n} is not set`),
    )
  return out
}

/** hcl2json gives every block as a list of bodies; SPIRE allows each block once. */
function one(v: unknown): Obj | undefined {
  if (Array.isArray(v)) return v.length === 0 ? {} : (v[0] as Obj)
  return v !== null && typeof v === 'object' ? (v as Obj) : undefined
}

function port(v: unknown): unknown {
  return typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v
}

const SHARED = ['trust_domain', 'data_dir', 'log_level', 'log_format', 'log_file'] as const
const SERVER_SAME = [
  ...SHARED,
  'bind_address',
  'ca_ttl',
  'default_x509_svid_ttl',
  'default_jwt_svid_ttl',
  'jwt_issuer',
  'agent_ttl',
] as const
const AGENT_SAME = [
  ...SHARED,
  'server_address',
  'socket_path',
  'trust_bundle_path',
  'insecure_bootstrap',
  'join_token',
  'workload_x509_svid_key_type',
  'x509_svid_cache_max_size',
  'availability_target',
] as const
const SDS_KEYS = [
  'default_svid_name',
  'default_bundle_name',
  'default_all_bundles_name',
  'disable_spiffe_cert_validation',
] as const
const OUR_KEY_TYPES = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-4096']

class Mapper {
  readonly unmapped: string[] = []
  readonly notes: string[] = []

  copy(from: Obj, to: Obj, keys: readonly string[], path: string): void {
    for (const [k, v] of Object.entries(from)) {
      if (keys.includes(k)) to[k] = port(v)
      else if (!(k in to)) this.unmapped.push(`${path}.${k}: not supported by spiffe-edge`)
    }
  }

  server(main: Obj): Obj {
    const out: Obj = {}
    const rest: Obj = {}
    for (const [k, v] of Object.entries(main)) {
      switch (k) {
        case 'bind_port':
          out.bind_port = port(v)
          break
        case 'socket_path':
          out.admin_socket = v
          break
        case 'default_svid_ttl': // SPIRE's older name
          out.default_x509_svid_ttl = v
          break
        case 'ca_key_type':
          if (typeof v === 'string' && OUR_KEY_TYPES.includes(v)) out.ca_key_type = v
          else
            this.unmapped.push(
              `server.ca_key_type: '${String(v)}' (have ${OUR_KEY_TYPES.join(', ')})`,
            )
          break
        case 'ca_subject':
          this.notes.push(
            'server.ca_subject: ignored; the CA subject is CN=<trust domain> CA <n>, O=spiffe-edge (identity is in the URI SAN)',
          )
          break
        case 'federation': {
          const f = this.federation(one(v) ?? {})
          if (Object.keys(f).length > 0) out.federation = f
          break
        }
        case 'ratelimit': {
          const rl = one(v) ?? {}
          if (rl.attestation === false) out.attest_rate_per_second = 10_000
          for (const x of Object.keys(rl))
            if (x !== 'attestation') this.unmapped.push(`server.ratelimit.${x}: not supported`)
          break
        }
        default:
          rest[k] = v
      }
    }
    this.copy(rest, out, SERVER_SAME, 'server')
    return out
  }

  /**
   * SPIRE's `federation { bundle_endpoint { … profile "…" { … } } federates_with "td" { … } }`
   * as our [server.federation]: the same keys, the profile labels becoming values.
   */
  federation(f: Obj): Obj {
    const out: Obj = {}
    for (const [k, v] of Object.entries(f)) {
      if (k === 'bundle_endpoint') out.bundle_endpoint = this.bundleEndpoint(one(v) ?? {})
      else if (k === 'federates_with') {
        const fw: Obj = {}
        for (const [td, body] of Object.entries((v ?? {}) as Obj)) {
          const rel = this.relationship(td, one(body) ?? {})
          if (rel) fw[td] = rel
        }
        if (Object.keys(fw).length > 0) out.federates_with = fw
      } else this.unmapped.push(`server.federation.${k}: not supported by spiffe-edge`)
    }
    return out
  }

  /** The one labelled block of `v` (`profile "https_web" { … }`): its label and body. */
  private labelled(v: unknown, path: string): [string, Obj] | undefined {
    const labels = Object.entries((v ?? {}) as Obj)
    if (labels.length !== 1) {
      this.unmapped.push(`${path}: expected exactly one profile block, found ${labels.length}`)
      return undefined
    }
    const [label, body] = labels[0]!
    return [label, one(body) ?? {}]
  }

  private bundleEndpoint(be: Obj): Obj {
    const path = 'server.federation.bundle_endpoint'
    const out: Obj = {}
    for (const [k, v] of Object.entries(be)) {
      if (k === 'address' || k === 'refresh_hint') out[k] = v
      else if (k === 'port') out.port = port(v)
      else if (k === 'profile') {
        const p = this.labelled(v, `${path}.profile`)
        if (!p) continue
        const [type, body] = p
        const pp = `${path}.profile "${type}"`
        if (type === 'https_spiffe') {
          out.profile = type
          for (const x of Object.keys(body)) this.unmapped.push(`${pp}.${x}: not supported`)
        } else if (type === 'https_web') {
          out.profile = type
          for (const [x, xv] of Object.entries(body)) {
            if (x === 'serving_cert_file') {
              const sc = one(xv) ?? {}
              for (const [y, yv] of Object.entries(sc)) {
                if (y === 'cert_file_path') out.cert_file = yv
                else if (y === 'key_file_path') out.key_file = yv
                else if (y === 'file_sync_interval') out.file_sync_interval = yv
                else this.unmapped.push(`${pp}.serving_cert_file.${y}: not supported`)
              }
            } else if (x === 'acme')
              this.unmapped.push(
                `${pp}.acme: ACME is not supported; get the certificate with an ACME client and use serving_cert_file`,
              )
            else this.unmapped.push(`${pp}.${x}: not supported`)
          }
        } else this.unmapped.push(`${pp}: unknown profile (https_spiffe or https_web)`)
      } else if (k === 'acme')
        this.unmapped.push(
          `${path}.acme: ACME is not supported (and SPIRE moved it under profile "https_web")`,
        )
      else this.unmapped.push(`${path}.${k}: not supported by spiffe-edge`)
    }
    return out
  }

  private relationship(td: string, body: Obj): Obj | undefined {
    const path = `server.federation.federates_with "${td}"`
    const out: Obj = {}
    for (const [k, v] of Object.entries(body)) {
      if (k === 'bundle_endpoint_url') out.bundle_endpoint_url = v
      else if (k === 'bundle_endpoint_profile') {
        const p = this.labelled(v, `${path}.bundle_endpoint_profile`)
        if (!p) continue
        const [type, pb] = p
        const prof: Obj = { type }
        for (const [x, xv] of Object.entries(pb)) {
          if (type === 'https_spiffe' && x === 'endpoint_spiffe_id') prof.endpoint_spiffe_id = xv
          else this.unmapped.push(`${path}.bundle_endpoint_profile "${type}".${x}: not supported`)
        }
        out.bundle_endpoint_profile = prof
      } else if (k === 'bundle_endpoint')
        // SPIRE before 1.4: { address port spiffe_id use_web_pki }, with no URL to map to.
        this.unmapped.push(
          `${path}.bundle_endpoint: SPIRE's old form; write bundle_endpoint_url and bundle_endpoint_profile`,
        )
      else this.unmapped.push(`${path}.${k}: not supported by spiffe-edge`)
    }
    return Object.keys(out).length > 0 ? out : undefined
  }

  agent(main: Obj): Obj {
    const out: Obj = {}
    const rest: Obj = {}
    let host: unknown
    let serverPort: unknown
    for (const [k, v] of Object.entries(main)) {
      if (k === 'server_address') host = v
      else if (k === 'server_port') serverPort = port(v)
      else if (k === 'experimental') {
        const ex = one(v) ?? {}
        for (const [x, xv] of Object.entries(ex)) {
          if (x === 'sync_interval') out.sync_interval = xv
          else this.unmapped.push(`agent.experimental.${x}: not supported`)
        }
      } else if (k === 'sds') {
        // SPIRE's `sds { … }` block is our [agent.sds] with the same key names.
        const sds = one(v) ?? {}
        const mapped: Obj = {}
        this.copy(sds, mapped, SDS_KEYS, 'agent.sds')
        if (Object.keys(mapped).length > 0) out.sds = mapped
      } else if (k === 'trust_bundle_format' && v === 'pem') {
        // ours is PEM
      } else rest[k] = v
    }
    if (host !== undefined) out.server_address = host
    if (serverPort !== undefined) out.server_port = serverPort
    this.copy(rest, out, AGENT_SAME, 'agent')
    return out
  }

  /** `Kind "name" { plugin_data { … } }` → `[plugins.Kind.name]`; SPIRE-only plugins are listed. */
  plugins(kind: ConfigKind, plugins: Obj, main: Obj, source: string): Obj {
    const out: Obj = {}
    for (const [type, byName] of Object.entries(plugins)) {
      for (const [name, body] of Object.entries((byName ?? {}) as Obj)) {
        const b = one(body) ?? {}
        const data = one(b.plugin_data) ?? {}
        const path = `plugins.${type} "${name}"`
        for (const k of Object.keys(b))
          if (k !== 'plugin_data') this.unmapped.push(`${path}.${k}: not supported`)
        const put = (t: string, n: string, d: Obj) => {
          out[t] = { ...((out[t] as Obj | undefined) ?? {}), [n]: d }
        }
        if (type === 'DataStore') {
          const cs = data.connection_string
          if (name === 'sql' && data.database_type === 'sqlite3') {
            // A plain file path maps (replicas name one file); a DSN's URI or options do not.
            if (
              typeof cs === 'string' &&
              cs !== '' &&
              !cs.startsWith('file:') &&
              !cs.includes('?')
            ) {
              put(type, name, { database_type: 'sqlite3', connection_string: cs })
              this.notes.push(`${path}: the embedded SQLite datastore, in the file ${cs}`)
            } else
              this.notes.push(
                `${path}: the embedded SQLite datastore in data_dir is used (a connection_string that is not a plain file path is ignored)`,
              )
          } else this.unmapped.push(`${path}: only the embedded SQLite datastore exists here`)
        } else if (type === 'KeyManager' && name === 'disk' && kind === 'server') {
          // SPIRE keeps one keys.json; ours is a directory of key files (a SPIRE file is never read).
          const dir =
            typeof data.keys_path === 'string' ? join(dirname(data.keys_path), 'keys') : undefined
          put(type, name, dir ? { directory: dir } : {})
          if (dir)
            this.notes.push(`${path}: keys go to the directory ${dir}, not SPIRE's keys.json`)
        } else if (type === 'UpstreamAuthority' && name === 'disk' && kind === 'server') {
          main.upstream = {
            cert_file: data.cert_file_path,
            key_file: data.key_file_path,
            // SPIRE: without bundle_file_path the upstream certificate is the bundle.
            bundle_file: data.bundle_file_path ?? data.cert_file_path,
          }
        } else if (
          type === 'UpstreamAuthority' ||
          type === 'Notifier' ||
          type === 'BundlePublisher' ||
          type === 'CredentialComposer' ||
          type === 'SVIDStore'
        ) {
          this.unmapped.push(`${path}: no such plugin here`)
        } else {
          // NodeAttestor, KeyManager, WorkloadAttestor: same names; our parser checks the keys.
          put(type, name, data)
        }
      }
    }
    void source
    return out
  }
}

let hclParse: ((file: string, text: string) => Promise<Obj>) | undefined

// The package's typings pull in `lib="dom"`, which changes Node's global types for the whole
// program; a non-literal specifier keeps them out (the one function we use is typed here).
const HCL_PACKAGE = '@cdktf/hcl2json'

async function parseHcl(text: string, source: string): Promise<Obj> {
  hclParse ??= ((await import(HCL_PACKAGE)) as { parse: (f: string, t: string) => Promise<Obj> })
    .parse
  try {
    return await hclParse(source, text)
  } catch (err) {
    throw new ConfigError(source, [`not valid HCL: ${(err as Error).message}`])
  }
}

export async function convertSpireConfig(text: string, source: string): Promise<Converted> {
  const doc = await parseHcl(text, source)
  const m = new Mapper()
  const kind: ConfigKind | undefined = doc.server ? 'server' : doc.agent ? 'agent' : undefined
  if (!kind) throw new ConfigError(source, ['neither a `server {}` nor an `agent {}` block'])
  const main = kind === 'server' ? m.server(one(doc.server) ?? {}) : m.agent(one(doc.agent) ?? {})
  const plugins = m.plugins(kind, one(doc.plugins) ?? {}, main, source)
  const out: Obj = { [kind]: main, plugins }
  for (const [k, v] of Object.entries(doc)) {
    if (k === 'server' || k === 'agent' || k === 'plugins') continue
    if (k === 'health_checks') out.health_checks = one(v) ?? {}
    else if (k === 'telemetry') {
      const tel = one(v) ?? {}
      for (const [sink, body] of Object.entries(tel)) {
        if (sink === 'Prometheus') {
          const p = one(body) ?? {}
          out.telemetry = {
            Prometheus: { ...p, ...(p.port === undefined ? {} : { port: port(p.port) }) },
          }
        } else m.unmapped.push(`telemetry.${sink}: only the Prometheus sink exists here`)
      }
    } else m.unmapped.push(`${k}: not supported by spiffe-edge`)
  }
  if (out.health_checks) {
    const h = out.health_checks as Obj
    if (h.bind_port !== undefined) h.bind_port = port(h.bind_port)
  }
  return { kind, toml: `${stringify(out)}\n`, unmapped: m.unmapped, notes: m.notes }
}
