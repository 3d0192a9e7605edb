/** `spiffe-edge server …`: the run command and SPIRE's admin verbs (entry in server-entry.ts). */
import { adminCall } from '../server/admin-client.js'
import type { Group, Leaf, OptionSpec } from './command.js'
import { requireString } from './command.js'
import { leaf, seconds } from './server-common.js'
import { entryGroup } from './server-entry.js'

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
          description: 'token lifetime (600, 10m, 1h)',
          default: '600',
          valueName: 'DURATION',
        },
      },
      async (v, io, sock) => {
        const body: Record<string, unknown> = { ttl: seconds(v, 'ttl') }
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
