/** `spiffe-edge server entry …`: SPIRE's entry verbs and flags over the admin API. */
import { readFileSync } from 'node:fs'
import { isSpiffeEdgeError, UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import type { Group, Io, OptionSpec, OptionValues } from './command.js'
import { requireString } from './command.js'
import {
  hasAllSelectors,
  leaf,
  list,
  parseSelector,
  seconds,
  unixSeconds,
} from './server-common.js'
import { countMsg, entryBatchMsg, entryDeleteMsg, entryListMsg, line } from './spire-json.js'

export const ENTRY_FLAGS: Readonly<Record<string, OptionSpec>> = {
  spiffeID: { type: 'string', description: 'the SPIFFE ID this entry issues', valueName: 'ID' },
  parentID: {
    type: 'string',
    description: 'the agent (or node) ID the workload runs under',
    valueName: 'ID',
  },
  node: {
    type: 'boolean',
    description: 'a node entry: parent is spiffe://<td>/spire/server, selectors match agents',
  },
  selector: {
    type: 'string',
    multiple: true,
    description: 'type:value, repeat for AND',
    valueName: 'SEL',
  },
  x509SVIDTTL: {
    type: 'string',
    description: 'X509-SVID TTL (90s, 10m, 1h; plain numbers are seconds; 0: server default)',
    valueName: 'DURATION',
  },
  jwtSVIDTTL: {
    type: 'string',
    description: 'JWT-SVID TTL (90s, 10m, 1h; plain numbers are seconds; 0: server default)',
    valueName: 'DURATION',
  },
  dns: { type: 'string', multiple: true, description: 'DNS SAN, repeatable', valueName: 'NAME' },
  hint: {
    type: 'string',
    description: 'hint for workloads holding several SVIDs',
    valueName: 'TEXT',
  },
  federatesWith: {
    type: 'string',
    multiple: true,
    description: 'trust domain bundle to deliver too',
    valueName: 'TD',
  },
  admin: { type: 'boolean', description: 'grant admin API access to holders' },
  downstream: { type: 'boolean', description: 'a downstream (nested) server' },
  entryExpiry: {
    type: 'string',
    description: 'unix seconds after which the entry is pruned',
    valueName: 'T',
  },
}

const SHOW_FLAGS: Record<string, OptionSpec> = {
  entryID: { type: 'string', description: 'one entry by id', valueName: 'ID' },
  spiffeID: { type: 'string', description: 'entries issuing this ID', valueName: 'ID' },
  parentID: { type: 'string', description: 'entries under this parent', valueName: 'ID' },
  selector: {
    type: 'string',
    multiple: true,
    description: 'entries with this selector (repeat: all of them)',
    valueName: 'SEL',
  },
  federatesWith: {
    type: 'string',
    multiple: true,
    description: 'entries federating with this trust domain (repeat: all of them)',
    valueName: 'TD',
  },
  downstream: { type: 'boolean', description: 'only downstream entries' },
}

/** `show`/`count`: the server filters by ID and parent; the rest is matched here, as SPIRE's superset match. */
async function findEntries(v: OptionValues, sock: string): Promise<EntryView[]> {
  let entries: EntryView[]
  if (typeof v.entryID === 'string') {
    entries = [
      (await adminCall(
        sock,
        'GET',
        `/v1/entries/${encodeURIComponent(v.entryID)}`,
      )) as unknown as EntryView,
    ]
  } else {
    const q = new URLSearchParams()
    if (typeof v.spiffeID === 'string') q.set('spiffeId', v.spiffeID)
    if (typeof v.parentID === 'string') q.set('parentId', v.parentID)
    entries = (await adminCall(sock, 'GET', `/v1/entries?${q}`)).entries as EntryView[]
  }
  const selectors = list(v.selector).map(parseSelector)
  const tds = list(v.federatesWith)
  return entries.filter(
    (e) =>
      hasAllSelectors(e.selectors, selectors) &&
      tds.every((td) => e.federatesWith.includes(td)) &&
      (v.downstream !== true || e.downstream),
  )
}

const MAX_BATCH_BYTES = 16 * 1024 * 1024

/** `entry create -data FILE` (or `-` for stdin): one admin call per entry, reported per entry as SPIRE does. */
/** One entry created (POST) or replaced (PUT) from the flags; prints it as SPIRE does. */
async function writeEntry(
  v: OptionValues,
  io: Io,
  sock: string,
  method: 'POST' | 'PUT',
  path: string,
): Promise<number> {
  const e = (await adminCall(sock, method, path, entryBody(v))) as unknown as EntryView
  io.out(v.json ? line(entryBatchMsg([{ entry: e as never }])) : formatEntry(e))
  return 0
}

async function createBatch(v: OptionValues, io: Io, sock: string): Promise<number> {
  const file = String(v.data)
  let text: string
  try {
    text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read -data ${file}: ${(err as Error).message}`)
  }
  if (Buffer.byteLength(text) > MAX_BATCH_BYTES)
    throw new UsageError(`-data ${file} is larger than 16 MiB`)
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new UsageError(
      `-data ${file} is not JSON: ${(err as Error).message}`,
      'write {"entries": [ ... ]}',
    )
  }
  const items = (doc as { entries?: unknown }).entries
  if (!Array.isArray(items))
    throw new UsageError(`-data ${file} has no "entries" list`, 'write {"entries": [ ... ]}')
  const results: {
    status: string
    entry?: EntryView
    error?: { code?: string; message?: string }
  }[] = []
  for (const item of items) {
    try {
      const e = (await adminCall(
        sock,
        'POST',
        '/v1/entries',
        fromSpireEntry(item),
      )) as unknown as EntryView
      results.push({ status: 'OK', entry: e })
    } catch (err) {
      results.push({
        status: 'ERROR',
        error: isSpiffeEdgeError(err) ? err.toJSON() : { message: String(err) },
      })
    }
  }
  if (v.json) io.out(line(entryBatchMsg(results as never)))
  else
    for (const r of results) {
      if (r.entry) io.out(formatEntry(r.entry))
      else io.out(`FAILED to create entry: ${JSON.stringify(r.error)}\n\n`)
    }
  return results.every((r) => r.status === 'OK') ? 0 : 1
}

/**
 * SPIRE's -data files are protobuf JSON of types.Entry: IDs as {trust_domain, path} and int64 as
 * strings. Those become the admin API's forms (URIs, numbers); the plain forms pass unchanged.
 */
export function fromSpireEntry(item: unknown): Record<string, unknown> {
  if (typeof item !== 'object' || item === null) return item as Record<string, unknown>
  const out: Record<string, unknown> = { ...(item as Record<string, unknown>) }
  for (const k of ['spiffe_id', 'parent_id']) {
    const v = out[k] as { trust_domain?: unknown; path?: unknown } | undefined
    if (v && typeof v === 'object' && typeof v.trust_domain === 'string')
      out[k] = `spiffe://${v.trust_domain}${typeof v.path === 'string' ? v.path : ''}`
  }
  for (const k of ['expires_at', 'x509_svid_ttl', 'jwt_svid_ttl']) {
    if (typeof out[k] === 'string' && /^\d{1,15}$/.test(out[k] as string)) out[k] = Number(out[k])
  }
  // protojson writes expires_at 0 for "never"; the admin API says null.
  if (out.expires_at === 0) out.expires_at = null
  for (const k of ['id', 'revision_number', 'created_at', 'store_svid']) delete out[k]
  return out
}

export function entryBody(values: OptionValues): Record<string, unknown> {
  const node = values.node === true
  if (node && values.parentID !== undefined)
    throw new UsageError('--node and --parentID exclude each other')
  if (!node && values.parentID === undefined)
    throw new UsageError('--parentID (or --node) is required')
  const selectors = list(values.selector).map(parseSelector)
  if (selectors.length === 0) throw new UsageError('at least one --selector is required')
  return {
    spiffe_id: requireString(values, 'spiffeID'),
    parent_id: node ? undefined : values.parentID,
    node,
    selectors,
    x509_svid_ttl: seconds(values, 'x509SVIDTTL'),
    jwt_svid_ttl: seconds(values, 'jwtSVIDTTL'),
    dns_names: list(values.dns),
    hint: typeof values.hint === 'string' ? values.hint : '',
    federates_with: list(values.federatesWith),
    admin: values.admin === true,
    downstream: values.downstream === true,
    expires_at:
      values.entryExpiry === undefined ? null : unixSeconds(values.entryExpiry, 'entryExpiry'),
  }
}

export interface EntryView {
  id: string
  spiffeId: string
  parentId: string
  revision: number
  x509SvidTtl: number
  jwtSvidTtl: number
  selectors: { type: string; value: string }[]
  dnsNames: string[]
  hint: string
  federatesWith: string[]
  admin: boolean
  downstream: boolean
  expiresAt: number | null
}

/** SPIRE's `entry show` layout, so operators read it the same way. */
export function formatEntry(e: EntryView): string {
  const rows: [string, string][] = [
    ['Entry ID', e.id],
    ['SPIFFE ID', e.spiffeId],
    ['Parent ID', e.parentId],
    ['Revision', String(e.revision)],
    ['X509-SVID TTL', e.x509SvidTtl ? String(e.x509SvidTtl) : 'default'],
    ['JWT-SVID TTL', e.jwtSvidTtl ? String(e.jwtSvidTtl) : 'default'],
  ]
  if (e.expiresAt) rows.push(['Expiration time', new Date(e.expiresAt * 1000).toISOString()])
  for (const s of e.selectors) rows.push(['Selector', `${s.type}:${s.value}`])
  for (const d of e.dnsNames) rows.push(['DNS name', d])
  for (const f of e.federatesWith) rows.push(['FederatesWith', f])
  if (e.admin) rows.push(['Admin', 'true'])
  if (e.downstream) rows.push(['Downstream', 'true'])
  if (e.hint) rows.push(['Hint', e.hint])
  return `${rows.map(([k, v]) => `${k.padEnd(16)} : ${v}`).join('\n')}\n\n`
}

export const entryGroup: Group = {
  kind: 'group',
  name: 'entry',
  summary: 'registration entries: which workloads get which SPIFFE IDs',
  children: [
    leaf(
      'create',
      "create a registration entry (or a batch: -data FILE in SPIRE's JSON)",
      {
        ...ENTRY_FLAGS,
        data: {
          type: 'string',
          description: 'a JSON file of entries, {"entries": [...]} as spire-server takes it',
          valueName: 'FILE',
        },
      },
      async (v, io, sock) => {
        if (typeof v.data === 'string') return createBatch(v, io, sock)
        return writeEntry(v, io, sock, 'POST', '/v1/entries')
      },
    ),
    leaf(
      'update',
      'replace an entry (all fields, as create)',
      {
        entryID: { type: 'string', description: 'the entry to update', valueName: 'ID' },
        ...ENTRY_FLAGS,
      },
      async (v, io, sock) => {
        const id = encodeURIComponent(requireString(v, 'entryID'))
        return writeEntry(v, io, sock, 'PUT', `/v1/entries/${id}`)
      },
    ),
    leaf(
      'delete',
      'delete an entry',
      { entryID: { type: 'string', description: 'the entry to delete', valueName: 'ID' } },
      async (v, io, sock) => {
        const id = requireString(v, 'entryID')
        await adminCall(sock, 'DELETE', `/v1/entries/${encodeURIComponent(id)}`)
        io.out(v.json ? line(entryDeleteMsg(id)) : `Deleted entry with ID: ${id}\n`)
        return 0
      },
    ),
    leaf(
      'show',
      'show entries, filtered as SPIRE does (-entryID, -spiffeID, -parentID, -selector, ...)',
      SHOW_FLAGS,
      async (v, io, sock) => {
        const entries = await findEntries(v, sock)
        io.out(
          v.json
            ? line(entryListMsg(entries as never))
            : `Found ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}\n${entries.map(formatEntry).join('')}`,
        )
        return 0
      },
    ),
    leaf('count', 'count entries (the same filters as show)', SHOW_FLAGS, async (v, io, sock) => {
      const n = (await findEntries(v, sock)).length
      io.out(v.json ? line(countMsg(n)) : `${n} registration entr${n === 1 ? 'y' : 'ies'}\n`)
      return 0
    }),
    leaf('list', 'list every entry', {}, async (v, io, sock) => {
      const entries = (await adminCall(sock, 'GET', '/v1/entries')).entries as EntryView[]
      io.out(
        v.json
          ? line(entryListMsg(entries as never))
          : `Found ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}\n${entries.map(formatEntry).join('')}`,
      )
      return 0
    }),
  ],
}
