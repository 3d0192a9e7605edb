/** `spiffe-edge server …`: the run command and SPIRE's admin verbs (entry in server-entry.ts). */
import { adminCall } from '../server/admin-client.js'
import { type Group, type Leaf, requireString } from './command.js'
import { agentGroup } from './server-agent.js'
import { bundleGroup } from './server-bundle.js'
import { leaf, seconds } from './server-common.js'
import { entryGroup } from './server-entry.js'
import { federationGroup } from './server-federation.js'
import { jwtGroup, x509Group } from './server-mint.js'
import { joinTokenMsg, line, loggerMsg } from './spire-json.js'

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
        io.out(v.json ? line(joinTokenMsg(r)) : `Token: ${String(r.token)}\n`)
        return 0
      },
    ),
  ],
}

const healthcheck = leaf(
  'healthcheck',
  'check that the server answers on its admin socket and its datastore is sound',
  {
    shallow: { type: 'boolean', description: 'only that the server answers (no datastore check)' },
    verbose: { type: 'boolean', description: 'say what is being checked' },
  },
  async (v, io, sock) => {
    if (v.verbose === true && v.json !== true)
      io.out(`Checking server health on ${sock}${v.shallow === true ? ' (shallow)' : ''}\n`)
    const r = await adminCall(sock, 'GET', `/v1/health${v.shallow === true ? '?shallow=true' : ''}`)
    io.out(v.json ? `${JSON.stringify(r)}\n` : 'Server is healthy.\n')
    return 0
  },
)

function formatLogger(r: Record<string, unknown>): string {
  return `Logger Level : ${String(r.current_level)}\nLaunch Level : ${String(r.launch_level)}\n`
}

const loggerGroup: Group = {
  kind: 'group',
  name: 'logger',
  summary: "the running server's log level (SPIRE's logger get|set|reset)",
  children: [
    leaf('get', 'print the current and launch log levels', {}, async (v, io, sock) => {
      const r = await adminCall(sock, 'GET', '/v1/logger')
      io.out(v.json ? line(loggerMsg(r)) : formatLogger(r))
      return 0
    }),
    leaf(
      'set',
      'set the log level until reset or restart',
      {
        level: {
          type: 'string',
          description: 'debug, info, warn or error (any case)',
          valueName: 'LEVEL',
        },
      },
      async (v, io, sock) => {
        const r = await adminCall(sock, 'PUT', '/v1/logger', { level: requireString(v, 'level') })
        io.out(v.json ? line(loggerMsg(r)) : formatLogger(r))
        return 0
      },
    ),
    leaf('reset', 'back to the level the config set', {}, async (v, io, sock) => {
      const r = await adminCall(sock, 'DELETE', '/v1/logger')
      io.out(v.json ? line(loggerMsg(r)) : formatLogger(r))
      return 0
    }),
  ],
}

export function serverGroup(run: Leaf, validate: Leaf): Group {
  return {
    kind: 'group',
    name: 'server',
    summary: 'the trust domain server and its admin commands',
    children: [
      run,
      validate,
      entryGroup,
      agentGroup,
      tokenGroup,
      bundleGroup,
      federationGroup,
      loggerGroup,
      x509Group,
      jwtGroup,
      healthcheck,
    ],
  }
}
