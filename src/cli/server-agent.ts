/**
 * `spiffe-edge server agent …`: SPIRE's agent verbs (list with its filters, count, show, ban,
 * evict, purge) over the admin API. Filters run here on the server's list.
 */
import { UsageError } from '../errors.js'
import { adminCall } from '../server/admin-client.js'
import {
  durationOption,
  type Group,
  type OptionSpec,
  type OptionValues,
  requireString,
} from './command.js'
import { hasAllSelectors, leaf, list, parseSelector } from './server-common.js'
import { agentListMsg, agentMsg, countMsg, emptyMsg, line } from './spire-json.js'

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

const BOOL_FILTER = (what: string): OptionSpec => ({
  type: 'string',
  description: `true or false: only agents that ${what} or not`,
  valueName: 'BOOL',
})

const LIST_FLAGS: Record<string, OptionSpec> = {
  selector: {
    type: 'string',
    multiple: true,
    description: 'agents with this selector (repeat: all of them)',
    valueName: 'SEL',
  },
  attestationType: {
    type: 'string',
    description: 'agents attested with this plugin',
    valueName: 'TYPE',
  },
  banned: BOOL_FILTER('are banned'),
  canReattest: BOOL_FILTER('can re-attest'),
  expiresBefore: {
    type: 'string',
    description: 'agents whose SVID expires before this time (RFC 3339 or unix seconds)',
    valueName: 'TIME',
  },
}

function boolFilter(v: OptionValues, name: string): boolean | undefined {
  const x = v[name]
  if (x === undefined) return undefined
  if (x === 'true' || x === 'false') return x === 'true'
  throw new UsageError(`-${name} must be true or false, got '${String(x)}'`)
}

function timeFilter(v: OptionValues, name: string): number | undefined {
  const x = v[name]
  if (typeof x !== 'string') return undefined
  const ms = /^\d+$/.test(x) ? Number(x) * 1000 : Date.parse(x)
  if (!Number.isFinite(ms))
    throw new UsageError(
      `-${name} '${x}' is not a time`,
      'write 2026-12-31T00:00:00Z or unix seconds',
    )
  return Math.floor(ms / 1000)
}

async function findAgents(v: OptionValues, sock: string): Promise<AgentView[]> {
  const selectors = list(v.selector).map(parseSelector)
  const banned = boolFilter(v, 'banned')
  const canReattest = boolFilter(v, 'canReattest')
  const before = timeFilter(v, 'expiresBefore')
  const type = typeof v.attestationType === 'string' ? v.attestationType : undefined
  const all = (await adminCall(sock, 'GET', '/v1/agents')).agents as AgentView[]
  return all.filter(
    (a) =>
      hasAllSelectors(a.selectors, selectors) &&
      (type === undefined || a.attestorType === type) &&
      (banned === undefined || a.banned === banned) &&
      (canReattest === undefined || a.canReattest === canReattest) &&
      (before === undefined || a.certNotAfter < before),
  )
}

const SPIFFE_ID_FLAG: Record<string, OptionSpec> = {
  spiffeID: { type: 'string', description: "the agent's SPIFFE ID", valueName: 'ID' },
}

export const agentGroup: Group = {
  kind: 'group',
  name: 'agent',
  summary: 'attested agents',
  children: [
    leaf(
      'list',
      'list attested agents, filtered as SPIRE does',
      LIST_FLAGS,
      async (v, io, sock) => {
        const agents = await findAgents(v, sock)
        io.out(
          v.json
            ? line(agentListMsg(agents as never))
            : `Found ${agents.length} attested agent${agents.length === 1 ? '' : 's'}:\n\n${agents.map(formatAgent).join('')}`,
        )
        return 0
      },
    ),
    leaf(
      'count',
      'count attested agents (the same filters as list)',
      LIST_FLAGS,
      async (v, io, sock) => {
        const n = (await findAgents(v, sock)).length
        io.out(v.json ? line(countMsg(n)) : `${n} attested agent${n === 1 ? '' : 's'}\n`)
        return 0
      },
    ),
    leaf(
      'purge',
      'evict agents whose SVID expired at least -expiredFor ago (they cannot renew; they must attest again)',
      {
        expiredFor: {
          type: 'string',
          description: 'how long past expiry (default 30d, as SPIRE)',
          default: '30d',
          valueName: 'DURATION',
        },
        dryRun: { type: 'boolean', description: 'list what would be evicted, change nothing' },
      },
      async (v, io, sock) => {
        const age = durationOption(v, 'expiredFor') ?? 30 * 86400
        const cutoff = Math.floor(Date.now() / 1000) - age
        const all = (await adminCall(sock, 'GET', '/v1/agents')).agents as AgentView[]
        const stale = all.filter((a) => a.certNotAfter <= cutoff)
        const purged: string[] = []
        if (v.dryRun !== true) {
          for (const a of stale) {
            await adminCall(sock, 'POST', `/v1/agents/${encodeURIComponent(a.spiffeId)}/evict`)
            purged.push(a.spiffeId)
          }
        }
        // spire-server's own struct here (not a proto): {expired_agents: [{agent_id, deleted}]}.
        if (v.json)
          io.out(
            line({
              expired_agents: stale.map((a) => ({
                agent_id: a.spiffeId,
                deleted: purged.includes(a.spiffeId),
              })),
            }),
          )
        else if (stale.length === 0) io.out('No agents to purge.\n')
        else
          io.out(
            `${v.dryRun === true ? 'Expired agents that would be purged' : 'Purged agents'}:\n${stale.map((a) => `  ${a.spiffeId}\n`).join('')}`,
          )
        return 0
      },
    ),
    leaf('show', 'show one agent', SPIFFE_ID_FLAG, async (v, io, sock) => {
      const a = (await adminCall(
        sock,
        'GET',
        `/v1/agents/${encodeURIComponent(requireString(v, 'spiffeID'))}`,
      )) as unknown as AgentView
      io.out(v.json ? line(agentMsg(a as never)) : formatAgent(a))
      return 0
    }),
    leaf(
      'ban',
      'ban an agent: it cannot renew or re-attest until evicted',
      SPIFFE_ID_FLAG,
      async (v, io, sock) => {
        const id = requireString(v, 'spiffeID')
        await adminCall(sock, 'POST', `/v1/agents/${encodeURIComponent(id)}/ban`)
        io.out(v.json ? line(emptyMsg()) : 'Agent banned successfully\n')
        return 0
      },
    ),
    leaf('evict', 'forget an agent: it must attest again', SPIFFE_ID_FLAG, async (v, io, sock) => {
      const id = requireString(v, 'spiffeID')
      await adminCall(sock, 'POST', `/v1/agents/${encodeURIComponent(id)}/evict`)
      io.out(v.json ? line(emptyMsg()) : 'Agent evicted successfully\n')
      return 0
    }),
  ],
}
