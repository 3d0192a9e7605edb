/**
 * `spiffe-edge server federation create|update|delete|list|show|refresh`, SPIRE's verbs and
 * flags. Relationships come one per command from flags, or many from `-data FILE` in SPIRE's JSON
 * shape ({"federationRelationships": [{trustDomain, bundleEndpointURL, bundleEndpointProfile,
 * endpointSPIFFEID, trustDomainBundle, trustDomainBundleFormat}]}). The server checks everything
 * again; this only reads files (bounded) and reshapes.
 */
import { closeSync, openSync, readSync } from 'node:fs'
import { UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import type { Group, OptionSpec, OptionValues } from './command.js'
import { leaf } from './server-common.js'
import {
  federationBatchMsg,
  federationDeleteMsg,
  federationListMsg,
  federationMsg,
  line,
} from './spire-json.js'

/** The admin API takes at most 1 MiB; a bundle is at most 256 KiB (as the fetcher's). */
const MAX_DATA_BYTES = 1 << 20
const MAX_BUNDLE_BYTES = 256 * 1024

const str = (description: string, valueName?: string): OptionSpec => ({
  type: 'string',
  description,
  ...(valueName ? { valueName } : {}),
})
const RELATIONSHIP_FLAGS: Record<string, OptionSpec> = {
  trustDomain: str('name of the trust domain to federate with (example.org)', 'TD'),
  bundleEndpointURL: str('URL of its SPIFFE bundle endpoint (https)', 'URL'),
  bundleEndpointProfile: str('endpoint profile: https_web or https_spiffe', 'PROFILE'),
  endpointSpiffeID: str('SPIFFE ID of the bundle endpoint server (https_spiffe only)', 'ID'),
  trustDomainBundlePath: str('its first bundle (optional; https_spiffe needs one)', 'FILE'),
  trustDomainBundleFormat: str('format of that bundle: pem or spiffe (default pem)', 'FORMAT'),
  data: str("SPIRE's federation relationships JSON (- for stdin); no other flags then", 'FILE'),
}

/** Reads at most `max` bytes of `path` (- = stdin); more is refused, not truncated. */
export function readBounded(path: string, max: number, flag: string): string {
  let fd: number
  try {
    fd = path === '-' ? 0 : openSync(path, 'r')
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${(err as Error).message}`, `check -${flag}`)
  }
  try {
    const buf = Buffer.alloc(max + 1)
    let n = 0
    for (;;) {
      let r: number
      try {
        r = readSync(fd, buf, n, buf.length - n, null)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue
        throw new UsageError(`cannot read ${path}: ${(err as Error).message}`, `check -${flag}`)
      }
      if (r === 0) break
      n += r
      if (n > max) throw new UsageError(`${path} is larger than ${max} bytes`, `check -${flag}`)
    }
    return buf.subarray(0, n).toString('utf8')
  } finally {
    if (fd !== 0) closeSync(fd)
  }
}

/** Go's encoding/json matches field names case-insensitively; SPIRE's -data files rely on it. */
function field(o: Record<string, unknown>, name: string): unknown {
  const k = Object.keys(o).find((x) => x.toLowerCase() === name.toLowerCase())
  return k === undefined ? undefined : o[k]
}

function fromData(text: string): Record<string, unknown>[] {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new UsageError(
      `-data is not JSON: ${(err as Error).message}`,
      "see SPIRE's format in --help",
    )
  }
  const list =
    doc && typeof doc === 'object'
      ? field(doc as Record<string, unknown>, 'federationRelationships')
      : undefined
  if (!Array.isArray(list))
    throw new UsageError(
      '-data needs {"federationRelationships": [ … ]}',
      "see SPIRE's format in --help",
    )
  return list.map((item, i) => {
    if (!item || typeof item !== 'object' || Array.isArray(item))
      throw new UsageError(`-data item ${i} is not an object`)
    const o = item as Record<string, unknown>
    const bundle = field(o, 'trustDomainBundle')
    const format =
      field(o, 'trustDomainBundleFormat') ??
      (bundle !== undefined && typeof bundle === 'object' ? 'spiffe' : 'pem')
    return {
      trust_domain: field(o, 'trustDomain'),
      bundle_endpoint_url: field(o, 'bundleEndpointURL'),
      bundle_endpoint_profile: field(o, 'bundleEndpointProfile'),
      endpoint_spiffe_id: field(o, 'endpointSPIFFEID'),
      // SPIRE's JSON carries the SPIFFE bundle as an object and PEM as a string.
      ...(bundle === undefined
        ? {}
        : {
            trust_domain_bundle: typeof bundle === 'string' ? bundle : JSON.stringify(bundle),
            trust_domain_bundle_format: format,
          }),
    }
  })
}

function relationships(v: OptionValues): Record<string, unknown>[] {
  const flags = Object.keys(RELATIONSHIP_FLAGS).filter((k) => k !== 'data' && v[k] !== undefined)
  if (typeof v.data === 'string') {
    if (flags.length > 0)
      throw new UsageError(
        `cannot use ${flags.map((f) => `-${f}`).join(', ')} with -data`,
        'put every relationship in the -data file',
      )
    return fromData(readBounded(v.data, MAX_DATA_BYTES, 'data'))
  }
  if (typeof v.trustDomain !== 'string' || v.trustDomain === '')
    throw new UsageError('-trustDomain is required', 'pass -trustDomain example.org, or -data FILE')
  const path = v.trustDomainBundlePath
  return [
    {
      trust_domain: v.trustDomain,
      bundle_endpoint_url: v.bundleEndpointURL,
      bundle_endpoint_profile: v.bundleEndpointProfile,
      ...(typeof v.endpointSpiffeID === 'string' ? { endpoint_spiffe_id: v.endpointSpiffeID } : {}),
      ...(typeof path === 'string'
        ? {
            trust_domain_bundle: readBounded(path, MAX_BUNDLE_BYTES, 'trustDomainBundlePath'),
            trust_domain_bundle_format: v.trustDomainBundleFormat ?? 'pem',
          }
        : {}),
    },
  ]
}

export function printRelationship(r: Record<string, unknown>): string {
  const rows = [
    ['Trust domain', r.trust_domain],
    ['Bundle endpoint URL', r.bundle_endpoint_url],
    ['Bundle endpoint profile', r.bundle_endpoint_profile],
    ...(r.endpoint_spiffe_id ? [['Endpoint SPIFFE ID', r.endpoint_spiffe_id]] : []),
    ...(r.source
      ? [['Source', r.source === 'config' ? 'config file' : 'admin API (datastore)']]
      : []),
    ['Last fetch OK', r.lastSuccess ?? 'never'],
    ...(r.lastError ? [['Last error', r.lastError]] : []),
    ['Next fetch', r.nextFetch ?? '-'],
  ]
  return `${rows.map(([k, v]) => `${String(k).padEnd(25)} : ${String(v)}`).join('\n')}\n\n`
}

interface Result {
  status: { code: string; message: string; remedy?: string }
  trust_domain?: string
  federation_relationship?: Record<string, unknown>
}

function batchLeaf(name: 'create' | 'update', summary: string) {
  return leaf(name, summary, RELATIONSHIP_FLAGS, async (v, io, sock) => {
    const rels = relationships(v)
    const r = await adminCall(sock, name === 'create' ? 'POST' : 'PUT', '/v1/federation', {
      relationships: rels,
    })
    const results = r.results as Result[]
    const failed = results.filter((x) => x.status.code !== 'OK')
    if (v.json) io.out(line(federationBatchMsg(results)))
    else {
      for (const x of results) {
        if (x.status.code === 'OK')
          io.out(`\n${printRelationship(x.federation_relationship ?? {})}`)
        else
          io.err(
            `\nFailed to ${name} the federation relationship with ${x.trust_domain ?? '?'} (code: ${x.status.code}): ${x.status.message}\n` +
              (x.status.remedy ? `  remedy: ${x.status.remedy}\n` : ''),
          )
      }
    }
    return failed.length > 0 ? 1 : 0
  })
}

const td = (v: string | boolean | string[] | undefined, flag: string): string => {
  if (typeof v !== 'string' || v === '')
    throw new UsageError(`-${flag} is required`, `pass -${flag} spiffe://example.org`)
  return encodeURIComponent(v)
}

export const federationGroup: Group = {
  kind: 'group',
  name: 'federation',
  summary:
    "federation relationships: the config file's and those created here (kept in the datastore)",
  children: [
    batchLeaf('create', 'create federation relationships (kept in the datastore, fetched at once)'),
    batchLeaf('update', 'replace federation relationships created with `create`'),
    leaf(
      'delete',
      'delete a relationship created with `create` (its bundle stays: `bundle delete` removes it)',
      { id: str('the trust domain of the relationship (spiffe://example.org)', 'ID') },
      async (v, io, sock) => {
        await adminCall(sock, 'DELETE', `/v1/federation/${td(v.id, 'id')}`)
        io.out(
          v.json
            ? line(federationDeleteMsg(String(v.id).replace(/^spiffe:\/\//, '')))
            : 'federation relationship deleted.\n',
        )
        return 0
      },
    ),
    leaf('list', 'list the federation relationships', {}, async (v, io, sock) => {
      const r = await adminCall(sock, 'GET', '/v1/federation')
      const rels = r.relationships as Record<string, unknown>[]
      if (v.json) io.out(line(federationListMsg(rels)))
      else {
        io.out(`Found ${rels.length} federation relationship${rels.length === 1 ? '' : 's'}\n\n`)
        for (const rel of rels) io.out(printRelationship(rel))
      }
      return 0
    }),
    leaf(
      'show',
      'show one federation relationship',
      { trustDomain: str('its trust domain', 'TD') },
      async (v, io, sock) => {
        const r = await adminCall(sock, 'GET', `/v1/federation/${td(v.trustDomain, 'trustDomain')}`)
        io.out(v.json ? line(federationMsg(r)) : printRelationship(r))
        return 0
      },
    ),
    leaf(
      'refresh',
      "fetch a relationship's bundle now (see the result with `show`)",
      { id: str('the trust domain of the relationship (spiffe://example.org)', 'ID') },
      async (v, io, sock) => {
        const r = await adminCall(sock, 'POST', `/v1/federation/${td(v.id, 'id')}/refresh`)
        io.out(v.json ? `${JSON.stringify(r)}\n` : 'bundle refresh started.\n')
        return 0
      },
    ),
  ],
}
