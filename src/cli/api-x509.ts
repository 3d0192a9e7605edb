/**
 * `spiffe-edge api fetch x509` and `api watch`: X509-SVIDs from the Workload API, verified against
 * their own bundles, printed as spire-agent does, and (fetch --write) written to files atomically.
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
import type { ClientX509Response } from '../agent/workload-api/client.js'
import { SpiffeEdgeError, UsageError } from '../errors.js'
import { certificateToPem, X509Bundle } from '../spiffe/bundle.js'
import { validateX509Svid } from '../spiffe/x509-svid.js'
import {
  b64,
  COMMON,
  connect,
  goDuration,
  goTime,
  outputOf,
  tdName,
  withClient,
} from './api-common.js'
import type { Io, Leaf } from './command.js'

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
export function writeFile(path: string, text: string, mode: 0o600 | 0o644): void {
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

export const fetchX509: Leaf = {
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

export const watch: Leaf = {
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
