/** `spiffe-edge server entry …`: SPIRE's entry verbs and flags over the admin API. */
import { UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import type { Group, OptionSpec, OptionValues } from './command.js'
import { requireString } from './command.js'
import { leaf, list, parseSelector, seconds, unixSeconds } from './server-common.js'

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
    leaf('create', 'create a registration entry', ENTRY_FLAGS, async (v, io, sock) => {
      const e = (await adminCall(sock, 'POST', '/v1/entries', entryBody(v))) as unknown as EntryView
      io.out(v.json ? `${JSON.stringify(e)}\n` : formatEntry(e))
      return 0
    }),
    leaf(
      'update',
      'replace an entry (all fields, as create)',
      {
        entryID: { type: 'string', description: 'the entry to update', valueName: 'ID' },
        ...ENTRY_FLAGS,
      },
      async (v, io, sock) => {
        const id = encodeURIComponent(requireString(v, 'entryID'))
        const e = (await adminCall(
          sock,
          'PUT',
          `/v1/entries/${id}`,
          entryBody(v),
        )) as unknown as EntryView
        io.out(v.json ? `${JSON.stringify(e)}\n` : formatEntry(e))
        return 0
      },
    ),
    leaf(
      'delete',
      'delete an entry',
      { entryID: { type: 'string', description: 'the entry to delete', valueName: 'ID' } },
      async (v, io, sock) => {
        const id = requireString(v, 'entryID')
        await adminCall(sock, 'DELETE', `/v1/entries/${encodeURIComponent(id)}`)
        io.out(v.json ? `${JSON.stringify({ deleted: id })}\n` : `Deleted entry with ID: ${id}\n`)
        return 0
      },
    ),
    leaf(
      'show',
      'show entries, filtered by --entryID, --spiffeID or --parentID',
      {
        entryID: { type: 'string', description: 'one entry by id', valueName: 'ID' },
        spiffeID: { type: 'string', description: 'entries issuing this ID', valueName: 'ID' },
        parentID: { type: 'string', description: 'entries under this parent', valueName: 'ID' },
      },
      async (v, io, sock) => {
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
        io.out(
          v.json
            ? `${JSON.stringify({ entries })}\n`
            : `Found ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}\n${entries.map(formatEntry).join('')}`,
        )
        return 0
      },
    ),
    leaf('list', 'list every entry', {}, async (v, io, sock) => {
      const entries = (await adminCall(sock, 'GET', '/v1/entries')).entries as EntryView[]
      io.out(
        v.json
          ? `${JSON.stringify({ entries })}\n`
          : `Found ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}\n${entries.map(formatEntry).join('')}`,
      )
      return 0
    }),
  ],
}
