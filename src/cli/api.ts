/**
 * `spiffe-edge api …` and `healthcheck`: a Workload API client for operators, with SPIRE's
 * `spire-agent api` output so scripts and habits carry over. Every command talks to the agent's
 * public socket (--socket-path, else $SPIFFE_ENDPOINT_SOCKET, else the default path).
 */
import { randomBytes, X509Certificate } from 'node:crypto'
import {
  closeSync,
  fchmodSync,
  constants as fsc,
  fsyncSync,
  mkdirSync,
  openSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import { join } from 'node:path'
import { SOCKET_ENV } from '../agent/workload-api/addr.js'
import {
  type ClientX509Response,
  type WorkloadClient,
  workloadClient,
} from '../agent/workload-api/client.js'
import { SpiffeEdgeError, UsageError } from '../errors.js'
import { certificateToPem, X509Bundle } from '../spiffe/bundle.js'
import { validateX509Svid } from '../spiffe/x509-svid.js'
import type { Group, Io, Leaf, OptionSpec, OptionValues } from './command.js'
import { requireString } from './command.js'

export { DEFAULT_AGENT_SOCKET } from '../agent/config.js'

import { DEFAULT_AGENT_SOCKET } from '../agent/config.js'

const COMMON: Readonly<Record<string, OptionSpec>> = {
  'socket-path': {
    type: 'string',
    description: `the agent's Workload API socket (env ${SOCKET_ENV}, else ${DEFAULT_AGENT_SOCKET})`,
    valueName: 'PATH',
  },
  output: {
    type: 'string',
    description: 'pretty or json',
    default: 'pretty',
    valueName: 'FORMAT',
  },
  timeout: {
    type: 'string',
    description: 'seconds to wait for the agent',
    default: '5',
    valueName: 'S',
  },
}

function socketOf(values: OptionValues, io: Io): string {
  const v = values['socket-path']
  if (typeof v === 'string' && v !== '') return v
  const env = io.env[SOCKET_ENV]
  return env !== undefined && env !== '' ? env : DEFAULT_AGENT_SOCKET
}

function outputOf(values: OptionValues): 'pretty' | 'json' {
  const v = values.output ?? 'pretty'
  if (v !== 'pretty' && v !== 'json') {
    throw new UsageError(`--output must be pretty or json, got '${String(v)}'`)
  }
  return v
}

function timeoutOf(values: OptionValues): number {
  const v = values.timeout ?? '5'
  const n = Number(v)
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--timeout must be a positive number of seconds, got '${String(v)}'`)
  }
  return Math.round(n * 1000)
}

function connect(values: OptionValues, io: Io): WorkloadClient {
  return workloadClient(socketOf(values, io), { timeoutMs: timeoutOf(values) })
}

/** Go's time.Time %v form, as spire-agent prints it: 2006-01-02 15:04:05 +0000 UTC. */
function goTime(d: Date): string {
  return `${d
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, '')} +0000 UTC`
}

/** Roughly Go's Duration.String for sub-minute durations. */
function goDuration(ms: number): string {
  if (ms < 1) return `${Math.round(ms * 1000)}µs`
  if (ms < 1000) return `${Number(ms.toFixed(3))}ms`
  return `${Number((ms / 1000).toFixed(3))}s`
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')

function tdName(key: string): string {
  return key.replace(/^spiffe:\/\//, '')
}

/** Checks every SVID against its own bundle, as spire-agent does before printing. */
function verify(r: ClientX509Response): void {
  const now = new Date()
  for (const s of r.svids) validateX509Svid(s.chain, (td) => new X509Bundle(td, s.bundle), now)
}

function prettyX509(r: ClientX509Response, ms: number): string {
  const n = r.svids.length
  const lines = [`Received ${n} svid${n === 1 ? '' : 's'} after ${goDuration(ms)}`]
  const fed = [...r.federatedBundles].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  for (const s of r.svids) {
    lines.push('')
    const leaf = new X509Certificate(s.chain[0]!)
    lines.push(`SPIFFE ID:\t\t${s.spiffeId}`)
    if (s.hint !== '') lines.push(`Hint:\t\t\t${s.hint}`)
    lines.push(`SVID Valid After:\t${goTime(new Date(leaf.validFrom))}`)
    lines.push(`SVID Valid Until:\t${goTime(new Date(leaf.validTo))}`)
    s.chain.slice(1).forEach((der, i) => {
      const c = new X509Certificate(der)
      lines.push(`Intermediate #${i + 1} Valid After:\t${goTime(new Date(c.validFrom))}`)
      lines.push(`Intermediate #${i + 1} Valid Until:\t${goTime(new Date(c.validTo))}`)
    })
    s.bundle.forEach((der, i) => {
      const c = new X509Certificate(der)
      lines.push(`CA #${i + 1} Valid After:\t${goTime(new Date(c.validFrom))}`)
      lines.push(`CA #${i + 1} Valid Until:\t${goTime(new Date(c.validTo))}`)
    })
    for (const [key, cas] of fed) {
      cas.forEach((der, i) => {
        const c = new X509Certificate(der)
        const td = tdName(key)
        lines.push(`[${td}] CA #${i + 1} Valid After:\t${goTime(new Date(c.validFrom))}`)
        lines.push(`[${td}] CA #${i + 1} Valid Until:\t${goTime(new Date(c.validTo))}`)
      })
    }
  }
  lines.push('')
  return `${lines.join('\n')}\n`
}

/** The X509SVIDResponse as protojson-like JSON (what spire-agent's -output json prints). */
function jsonX509(r: ClientX509Response): Record<string, unknown> {
  const concat = (parts: readonly Uint8Array[]) =>
    b64(Buffer.concat(parts.map((p) => Buffer.from(p))))
  return {
    svids: r.svids.map((s) => ({
      spiffe_id: s.spiffeId,
      x509_svid: concat(s.chain),
      x509_svid_key: b64(s.privateKey),
      bundle: concat(s.bundle),
      hint: s.hint,
    })),
    crl: [],
    federated_bundles: Object.fromEntries([...r.federatedBundles].map(([k, v]) => [k, concat(v)])),
  }
}

function pkcs8Pem(der: Uint8Array): string {
  const lines =
    Buffer.from(der)
      .toString('base64')
      .match(/.{1,64}/g) ?? []
  return `-----BEGIN PRIVATE KEY-----\n${lines.join('\n')}\n-----END PRIVATE KEY-----\n`
}

/**
 * Writes through a fresh temporary name (O_CREAT|O_EXCL|O_NOFOLLOW, created 0600), then renames it
 * over `path`. Whatever was planted at `path` (a symlink to someone else's file, a hard link) is
 * replaced as a directory entry, never written through. Keys stay 0600; certificates are public.
 */
function writeFile(path: string, text: string, mode: 0o600 | 0o644): void {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600)
  try {
    try {
      writeSync(fd, text)
      fsyncSync(fd)
      fchmodSync(fd, mode) // exact, whatever the umask
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, path)
  } catch (err) {
    try {
      unlinkSync(tmp)
    } catch {
      // already renamed or never created
    }
    throw err
  }
}

function writeX509(r: ClientX509Response, dir: string, io: Io): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const fed = [...r.federatedBundles].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    r.svids.forEach((s, i) => {
      const svidPath = join(dir, `svid.${i}.pem`)
      const keyPath = join(dir, `svid.${i}.key`)
      const bundlePath = join(dir, `bundle.${i}.pem`)
      io.out(`Writing SVID #${i} to file ${svidPath}.\n`)
      writeFile(svidPath, s.chain.map(certificateToPem).join(''), 0o644)
      io.out(`Writing key #${i} to file ${keyPath}.\n`)
      writeFile(keyPath, pkcs8Pem(s.privateKey), 0o600)
      io.out(`Writing bundle #${i} to file ${bundlePath}.\n`)
      writeFile(bundlePath, s.bundle.map(certificateToPem).join(''), 0o644)
      fed.forEach(([key, cas], j) => {
        const p = join(dir, `federated_bundle.${i}.${j}.pem`)
        io.out(`Writing federated bundle #${j} for trust domain ${tdName(key)} to file ${p}.\n`)
        writeFile(p, cas.map(certificateToPem).join(''), 0o644)
      })
    })
  } catch (err) {
    if (err instanceof SpiffeEdgeError) throw err
    throw new SpiffeEdgeError('ERR_CONFIG', `cannot write to ${dir}: ${(err as Error).message}`, {
      remedy: 'choose a directory this user can write',
      cause: err,
    })
  }
}

async function withClient<T>(
  values: OptionValues,
  io: Io,
  fn: (c: WorkloadClient) => Promise<T>,
): Promise<T> {
  const c = connect(values, io)
  try {
    return await fn(c)
  } finally {
    c.close()
  }
}

const fetchX509: Leaf = {
  kind: 'command',
  name: 'x509',
  summary: 'Fetch the X509-SVIDs of this process from the Workload API',
  options: {
    ...COMMON,
    write: {
      type: 'string',
      description:
        'also write the SVIDs, keys and bundles to DIR (keys 0600; files replaced, never written through)',
      valueName: 'DIR',
    },
    silent: { type: 'boolean', description: 'print nothing on success' },
  },
  run: (values, io) =>
    withClient(values, io, async (c) => {
      const out = outputOf(values)
      const t0 = performance.now()
      const r = await c.fetchX509()
      const ms = performance.now() - t0
      verify(r)
      if (!values.silent)
        io.out(out === 'json' ? `${JSON.stringify(jsonX509(r))}\n` : prettyX509(r, ms))
      if (typeof values.write === 'string' && values.write !== '') writeX509(r, values.write, io)
      return 0
    }),
}

const fetchJwt: Leaf = {
  kind: 'command',
  name: 'jwt',
  summary: 'Fetch JWT-SVIDs (and the JWT bundles) from the Workload API',
  options: {
    ...COMMON,
    audience: {
      type: 'string',
      multiple: true,
      description: 'audience the token is for (repeatable, or comma-separated)',
      valueName: 'AUD',
    },
    'spiffe-id': { type: 'string', description: 'only this identity', valueName: 'ID' },
  },
  run: (values, io) =>
    withClient(values, io, async (c) => {
      const out = outputOf(values)
      const raw = values.audience
      const audience = (Array.isArray(raw) ? raw : typeof raw === 'string' ? [raw] : [])
        .flatMap((a) => a.split(','))
        .map((a) => a.trim())
        .filter((a) => a !== '')
      if (audience.length === 0) throw new UsageError('audience must be specified (--audience)')
      const id = values['spiffe-id']
      const svids = await c.fetchJwt(audience, typeof id === 'string' && id !== '' ? id : undefined)
      const bundles = await c.fetchJwtBundles()
      if (out === 'json') {
        io.out(
          `${JSON.stringify({
            svids: svids.map((s) => ({ spiffe_id: s.spiffeId, svid: s.token, hint: s.hint })),
            bundles: Object.fromEntries(
              [...bundles].map(([k, v]) => [k, JSON.parse(v) as unknown]),
            ),
          })}\n`,
        )
        return 0
      }
      const lines: string[] = []
      for (const s of svids) {
        lines.push(`token(${s.spiffeId}):`, `\t${s.token}`)
        if (s.hint !== '') lines.push(`hint(${s.spiffeId}):`, `\t${s.hint}`)
      }
      for (const [k, v] of bundles) lines.push(`bundle(${k}):`, `\t${v}`)
      io.out(`${lines.join('\n')}\n`)
      return 0
    }),
}

const fetchBundles: Leaf = {
  kind: 'command',
  name: 'bundles',
  summary: 'Fetch the X.509 and JWT bundles from the Workload API',
  options: { ...COMMON },
  run: (values, io) =>
    withClient(values, io, async (c) => {
      const out = outputOf(values)
      const x509 = await c.fetchX509Bundles()
      const jwt = await c.fetchJwtBundles()
      const tds = [...new Set([...x509.keys(), ...jwt.keys()])].sort()
      if (out === 'json') {
        io.out(
          `${JSON.stringify({
            x509_bundles: Object.fromEntries([...x509].map(([k, v]) => [k, v.map(b64)])),
            jwt_bundles: Object.fromEntries(
              [...jwt].map(([k, v]) => [k, JSON.parse(v) as unknown]),
            ),
          })}\n`,
        )
        return 0
      }
      const lines: string[] = []
      for (const td of tds) {
        lines.push(`bundle(${td}):`)
        const cas = x509.get(td) ?? []
        lines.push(`\tX.509 authorities: ${cas.length}`)
        for (const der of cas) {
          const c = new X509Certificate(der)
          lines.push(
            `\t\t${c.subject.replace(/\n/g, ', ')} (valid until ${goTime(new Date(c.validTo))})`,
          )
        }
        const j = jwt.get(td)
        if (j !== undefined) lines.push(`\tJWT authorities: ${j}`)
      }
      io.out(`${lines.join('\n')}\n`)
      return 0
    }),
}

const validateJwt: Leaf = {
  kind: 'command',
  name: 'jwt',
  summary: 'Validate a JWT-SVID through the Workload API',
  options: {
    ...COMMON,
    audience: { type: 'string', description: 'the audience to validate for', valueName: 'AUD' },
    svid: { type: 'string', description: 'the JWT-SVID', valueName: 'TOKEN' },
  },
  run: (values, io) => {
    const audience = requireString(values, 'audience')
    const token = requireString(values, 'svid')
    return withClient(values, io, async (c) => {
      const out = outputOf(values)
      const r = await c.validateJwt(audience, token)
      if (out === 'json') {
        io.out(`${JSON.stringify({ spiffe_id: r.spiffeId, claims: r.claims })}\n`)
      } else {
        io.out(
          `SVID is valid.\nSPIFFE ID : ${r.spiffeId}\nClaims    : ${JSON.stringify(r.claims)}\n`,
        )
      }
      return 0
    })
  },
}

const watch: Leaf = {
  kind: 'command',
  name: 'watch',
  summary: 'Print every X509-SVID update until interrupted (SIGINT/SIGTERM)',
  options: {
    ...COMMON,
    'max-updates': {
      type: 'string',
      description: 'exit after N updates (default: run until interrupted)',
      valueName: 'N',
    },
  },
  run: async (values, io) => {
    const out = outputOf(values)
    const maxRaw = values['max-updates']
    const max = maxRaw === undefined ? Number.POSITIVE_INFINITY : Number(maxRaw)
    if (!(max >= 1) || (maxRaw !== undefined && !Number.isInteger(max))) {
      throw new UsageError(`--max-updates must be a positive whole number, got '${String(maxRaw)}'`)
    }
    const ac = new AbortController()
    const stop = () => ac.abort()
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    const c = connect(values, io)
    let seen = 0
    let last = performance.now()
    try {
      await c.watchX509(
        (r) => {
          const now = performance.now()
          verify(r)
          io.out(out === 'json' ? `${JSON.stringify(jsonX509(r))}\n` : prettyX509(r, now - last))
          last = now
          if (++seen >= max) ac.abort()
        },
        ac.signal,
        {
          // spire-agent api watch keeps retrying (a workload may be registered later).
          onError: (err) => {
            if (out === 'pretty') io.err(`Failed to fetch the X509-SVIDs: ${err.message}\n`)
          },
        },
      )
      return 0
    } finally {
      process.removeListener('SIGINT', stop)
      process.removeListener('SIGTERM', stop)
      c.close()
    }
  },
}

export const apiGroup: Group = {
  kind: 'group',
  name: 'api',
  summary: 'Talk to a running agent through the SPIFFE Workload API (as a workload would)',
  children: [
    {
      kind: 'group',
      name: 'fetch',
      summary: 'Fetch SVIDs and bundles',
      children: [fetchX509, fetchJwt, fetchBundles],
    },
    {
      kind: 'group',
      name: 'validate',
      summary: 'Validate SVIDs',
      children: [validateJwt],
    },
    watch,
  ],
}

export const agentHealthcheck: Leaf = {
  kind: 'command',
  name: 'healthcheck',
  summary: "Check that the agent's Workload API answers (grpc.health.v1)",
  options: {
    'socket-path': COMMON['socket-path']!,
    timeout: COMMON.timeout!,
    verbose: { type: 'boolean', description: 'say what is being checked' },
  },
  run: async (values, io) => {
    const socket = socketOf(values, io)
    if (values.verbose) io.out(`Checking agent health on ${socket}...\n`)
    let c: WorkloadClient | undefined
    try {
      c = workloadClient(socket, { timeoutMs: timeoutOf(values) })
      const status = await c.health()
      if (status !== 'SERVING') {
        io.err(`Agent is unhealthy: status ${status}\n`)
        return 1
      }
      io.out('Agent is healthy.\n')
      return 0
    } catch (err) {
      if (err instanceof UsageError) throw err
      io.err(`Agent is unhealthy: ${(err as Error).message}\n`)
      return 1
    } finally {
      c?.close()
    }
  },
}
