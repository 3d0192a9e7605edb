import { UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import type { Group, Io, Leaf, OptionSpec, OptionValues } from './command.js'
import { requireString } from './command.js'

const ADMIN_SOCKET: OptionSpec = {
  type: 'string',
  description: 'the server admin socket (env SPIFFE_EDGE_ADMIN_SOCKET)',
  valueName: 'PATH',
}
const JSON_FLAG: OptionSpec = { type: 'boolean', description: 'print JSON instead of text' }
const OUTPUT: OptionSpec = { type: 'string', description: 'pretty or json', valueName: 'FORMAT' }

function socketOf(values: OptionValues, io: Io): string {
  const v = values['admin-socket']
  if (typeof v === 'string' && v !== '') return v
  return io.env.SPIFFE_EDGE_ADMIN_SOCKET ?? './data/admin.sock'
}

const list = (v: string | boolean | string[] | undefined): string[] =>
  Array.isArray(v) ? v : typeof v === 'string' ? [v] : []

/** SPIRE's selector form: type:value, where the value may itself contain colons. */
export function parseSelector(s: string): { type: string; value: string } {
  const i = s.indexOf(':')
  if (i <= 0 || i === s.length - 1) {
    throw new UsageError(`selector '${s}' is not type:value`, 'write selectors as unix:uid:1000')
  }
  return { type: s.slice(0, i), value: s.slice(i + 1) }
}

function seconds(v: string | boolean | string[] | undefined, flag: string): number {
  if (v === undefined) return 0
  const n = Number(v)
  if (typeof v !== 'string' || !Number.isInteger(n) || n < 0) {
    throw new UsageError(`--${flag} must be a whole number of seconds`)
  }
  return n
}

const ENTRY_FLAGS: Readonly<Record<string, OptionSpec>> = {
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
    description: 'X509-SVID TTL in seconds (0: server default)',
    valueName: 'S',
  },
  jwtSVIDTTL: {
    type: 'string',
    description: 'JWT-SVID TTL in seconds (0: server default)',
    valueName: 'S',
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

function entryBody(values: OptionValues): Record<string, unknown> {
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
    x509_svid_ttl: seconds(values.x509SVIDTTL, 'x509SVIDTTL'),
    jwt_svid_ttl: seconds(values.jwtSVIDTTL, 'jwtSVIDTTL'),
    dns_names: list(values.dns),
    hint: typeof values.hint === 'string' ? values.hint : '',
    federates_with: list(values.federatesWith),
    admin: values.admin === true,
    downstream: values.downstream === true,
    expires_at:
      values.entryExpiry === undefined ? null : seconds(values.entryExpiry, 'entryExpiry'),
  }
}

interface EntryView {
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
function formatEntry(e: EntryView): string {
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

function leaf(
  name: string,
  summary: string,
  options: Record<string, OptionSpec>,
  run: (values: OptionValues, io: Io, socket: string) => Promise<number>,
): Leaf {
  return {
    kind: 'command',
    name,
    summary,
    options: { ...options, 'admin-socket': ADMIN_SOCKET, json: JSON_FLAG, output: OUTPUT },
    run: (values, io) => {
      // SPIRE spells it --output json; --json is the short form.
      if (values.output !== undefined && values.output !== 'pretty' && values.output !== 'json') {
        throw new UsageError(`--output must be pretty or json, got '${String(values.output)}'`)
      }
      return run(
        { ...values, json: values.json === true || values.output === 'json' },
        io,
        socketOf(values, io),
      )
    },
  }
}

const entryGroup: Group = {
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

interface AgentView {
  spiffeId: string
  attestorType: string
  certSerial: string
  certNotAfter: number
  banned: boolean
  canReattest: boolean
  selectors: { type: string; value: string }[]
}

function formatAgent(a: AgentView): string {
  const rows: [string, string][] = [
    ['SPIFFE ID', a.spiffeId],
    ['Attestation type', a.attestorType],
    ['Expiration time', new Date(a.certNotAfter * 1000).toISOString()],
    ['Serial number', a.certSerial],
    ['Can re-attest', String(a.canReattest)],
    ['Banned', String(a.banned)],
  ]
  for (const s of a.selectors) rows.push(['Selector', `${s.type}:${s.value}`])
  return `${rows.map(([k, v]) => `${k.padEnd(17)}: ${v}`).join('\n')}\n\n`
}

const SPIFFE_ID_FLAG: Record<string, OptionSpec> = {
  spiffeID: { type: 'string', description: "the agent's SPIFFE ID", valueName: 'ID' },
}

const agentGroup: Group = {
  kind: 'group',
  name: 'agent',
  summary: 'attested agents',
  children: [
    leaf('list', 'list attested agents', {}, async (v, io, sock) => {
      const agents = (await adminCall(sock, 'GET', '/v1/agents')).agents as AgentView[]
      io.out(
        v.json
          ? `${JSON.stringify({ agents })}\n`
          : `Found ${agents.length} attested agent${agents.length === 1 ? '' : 's'}:\n\n${agents.map(formatAgent).join('')}`,
      )
      return 0
    }),
    leaf('show', 'show one agent', SPIFFE_ID_FLAG, async (v, io, sock) => {
      const a = (await adminCall(
        sock,
        'GET',
        `/v1/agents/${encodeURIComponent(requireString(v, 'spiffeID'))}`,
      )) as unknown as AgentView
      io.out(v.json ? `${JSON.stringify(a)}\n` : formatAgent(a))
      return 0
    }),
    leaf(
      'ban',
      'ban an agent: it cannot renew or re-attest until evicted',
      SPIFFE_ID_FLAG,
      async (v, io, sock) => {
        const id = requireString(v, 'spiffeID')
        await adminCall(sock, 'POST', `/v1/agents/${encodeURIComponent(id)}/ban`)
        io.out(v.json ? `${JSON.stringify({ banned: id })}\n` : 'Agent banned successfully\n')
        return 0
      },
    ),
    leaf('evict', 'forget an agent: it must attest again', SPIFFE_ID_FLAG, async (v, io, sock) => {
      const id = requireString(v, 'spiffeID')
      await adminCall(sock, 'POST', `/v1/agents/${encodeURIComponent(id)}/evict`)
      io.out(v.json ? `${JSON.stringify({ evicted: id })}\n` : 'Agent evicted successfully\n')
      return 0
    }),
  ],
}

const tokenGroup: Group = {
  kind: 'group',
  name: 'token',
  summary: 'join tokens for join_token node attestation',
  children: [
    leaf(
      'generate',
      'generate a single-use join token',
      {
        spiffeID: {
          type: 'string',
          description: 'also give the agent this SPIFFE ID (a node alias)',
          valueName: 'ID',
        },
        ttl: {
          type: 'string',
          description: 'token lifetime in seconds',
          default: '600',
          valueName: 'S',
        },
      },
      async (v, io, sock) => {
        const body: Record<string, unknown> = { ttl: seconds(v.ttl, 'ttl') }
        if (typeof v.spiffeID === 'string') body.spiffe_id = v.spiffeID
        const r = await adminCall(sock, 'POST', '/v1/tokens', body)
        io.out(v.json ? `${JSON.stringify(r)}\n` : `Token: ${String(r.token)}\n`)
        return 0
      },
    ),
  ],
}

const bundleGroup: Group = {
  kind: 'group',
  name: 'bundle',
  summary: "the trust domain's bundle",
  children: [
    leaf(
      'show',
      'print the bundle (PEM CA certificates, or SPIFFE bundle JSON)',
      { format: { type: 'string', description: 'pem or spiffe', default: 'pem' } },
      async (v, io, sock) => {
        const r = await adminCall(
          sock,
          'GET',
          `/v1/bundle?format=${encodeURIComponent(String(v.format))}`,
        )
        io.out(v.json ? `${JSON.stringify(r)}\n` : String(r.bundle))
        return 0
      },
    ),
  ],
}

const healthcheck = leaf(
  'healthcheck',
  'check that the server answers on its admin socket',
  {},
  async (v, io, sock) => {
    const r = await adminCall(sock, 'GET', '/v1/health')
    io.out(v.json ? `${JSON.stringify(r)}\n` : 'Server is healthy.\n')
    return 0
  },
)

export function serverGroup(run: Leaf): Group {
  return {
    kind: 'group',
    name: 'server',
    summary: 'the trust domain server and its admin commands',
    children: [run, entryGroup, agentGroup, tokenGroup, bundleGroup, healthcheck],
  }
}
