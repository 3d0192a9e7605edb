/**
 * `spiffe-edge api …` and `healthcheck`: a Workload API client for operators, with SPIRE's
 * `spire-agent api` output so scripts and habits carry over. Every command talks to the agent's
 * public socket (--socket-path, else $SPIFFE_ENDPOINT_SOCKET, else the default path).
 */
import { X509Certificate } from 'node:crypto'
import { type WorkloadClient, workloadClient } from '../agent/workload-api/client.js'
import { UsageError } from '../errors.js'
import { b64, COMMON, goTime, outputOf, socketOf, timeoutOf, withClient } from './api-common.js'
import { fetchJwt, validateJwt } from './api-jwt.js'
import { fetchX509, watch } from './api-x509.js'
import type { Group, Leaf } from './command.js'

// Verbs live in api-x509.ts (fetch x509, watch), api-jwt.ts (fetch jwt, validate jwt) and here
// (fetch bundles, healthcheck); shared options and formatting in api-common.ts.
export { DEFAULT_AGENT_SOCKET } from '../agent/config.js'

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

export const apiGroup: Group = {
  kind: 'group',
  name: 'api',
  summary: 'Talk to a running agent through the SPIFFE Workload API (as a workload would)',
  children: [
    {
      kind: 'group',
      name: 'fetch',
      summary: 'Fetch SVIDs and bundles (alone: fetch x509, as spire-agent does)',
      children: [fetchX509, fetchJwt, fetchBundles],
      defaultChild: 'x509',
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
