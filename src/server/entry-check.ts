/**
 * Admin API entry bodies → datastore EntryInput, refusing what could never be issued: IDs outside
 * the trust domain or reserved to the server and agents, and malformed selectors or DNS names.
 */
import { SpiffeEdgeError } from '../errors.js'
import { SpiffeId, TrustDomain } from '../spiffe/id.js'
import type { EntryInput, Selector } from './datastore/types.js'

export function badEntry(message: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_INVALID', message, {
    remedy: 'fix the entry and try again',
  })
}

/**
 * SPIFFE IDs no entry may issue: the trust domain itself (an X509-SVID needs a path, so it could
 * never be signed and would stall its workloads), the server's ID, and the agents' namespace.
 */
export function checkIssuableId(id: SpiffeId, td: TrustDomain, serverId: string): void {
  const s = id.toString()
  if (s === `spiffe://${td.name}` || s === `spiffe://${td.name}/`)
    throw badEntry(`${s} is the trust domain itself; an entry must issue an ID with a path`)
  if (s === serverId) throw badEntry('an entry cannot issue the server ID')
  const path = s.slice(`spiffe://${td.name}`.length)
  if (path === '/spire/agent' || path.startsWith('/spire/agent/'))
    throw badEntry(`${s} is in /spire/agent/, which only node attestation issues`)
}

/** Validates an admin API entry body (snake_case JSON) into a datastore EntryInput. */
export function checkEntry(input: unknown, td: TrustDomain, serverId: string): EntryInput {
  if (typeof input !== 'object' || input === null) throw badEntry('entry must be a JSON object')
  const b = input as Record<string, unknown>
  const str = (k: string, def?: string): string => {
    const v = b[k] ?? def
    if (typeof v !== 'string') throw badEntry(`${k} must be a string`)
    return v
  }
  const strs = (k: string): string[] => {
    const v = b[k] ?? []
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
      throw badEntry(`${k} must be a list of strings`)
    return v as string[]
  }
  const ttl = (k: string): number => {
    const v = b[k] ?? 0
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
      throw badEntry(`${k} must be a non-negative integer`)
    return v
  }
  const spiffeId = SpiffeId.parse(str('spiffe_id'))
  if (!spiffeId.memberOf(td))
    throw badEntry(`spiffe_id ${spiffeId} is not in trust domain ${td.name}`)
  const parentId = b.node === true ? serverId : SpiffeId.parse(str('parent_id')).toString()
  if (!SpiffeId.parse(parentId).memberOf(td))
    throw badEntry(`parent_id ${parentId} is not in trust domain ${td.name}`)
  checkIssuableId(spiffeId, td, serverId)
  const rawSelectors = b.selectors
  if (!Array.isArray(rawSelectors) || rawSelectors.length === 0)
    throw badEntry('at least one selector is required')
  const selectors: Selector[] = rawSelectors.map((s) => {
    const t = (s as { type?: unknown }).type
    const v = (s as { value?: unknown }).value
    if (typeof t !== 'string' || typeof v !== 'string' || !/^[a-z0-9_]+$/.test(t) || v === '') {
      throw badEntry('selectors must be {type, value} with a lowercase type and a non-empty value')
    }
    // Control characters match nothing a workload attestor reports and garble logs and output.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: they are what is refused
    if (/[\u0000-\u001f\u007f-\u009f]/.test(v)) {
      throw badEntry(`selector ${t}: the value holds a control character`)
    }
    return { type: t, value: v }
  })
  const dnsNames = strs('dns_names')
  for (const d of dnsNames) {
    if (
      !/^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(
        d,
      ) ||
      d.length > 253
    ) {
      throw badEntry(`dns name '${d}' is not valid`)
    }
  }
  const federatesWith = strs('federates_with').map(
    (t) => TrustDomain.parse(t.replace(/^spiffe:\/\//, '')).name,
  )
  const expires = b.expires_at
  if (
    expires !== undefined &&
    expires !== null &&
    (typeof expires !== 'number' || !Number.isInteger(expires) || expires < 0)
  ) {
    throw badEntry('expires_at must be unix seconds')
  }
  return {
    spiffeId: spiffeId.toString(),
    parentId,
    selectors,
    x509SvidTtl: ttl('x509_svid_ttl'),
    jwtSvidTtl: ttl('jwt_svid_ttl'),
    dnsNames,
    hint: str('hint', ''),
    federatesWith,
    admin: b.admin === true,
    downstream: b.downstream === true,
    expiresAt: typeof expires === 'number' ? expires : null,
  }
}
