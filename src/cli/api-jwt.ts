/** `spiffe-edge api fetch jwt` and `api validate jwt`: JWT-SVIDs through the Workload API. */
import { UsageError } from '../errors.js'
import { COMMON, outputOf, withClient } from './api-common.js'
import type { Leaf } from './command.js'
import { requireString } from './command.js'

export const fetchJwt: Leaf = {
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
    spiffeID: { type: 'string', description: 'only this identity', valueName: 'ID' },
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
      const id = values.spiffeID
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

export const validateJwt: Leaf = {
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
