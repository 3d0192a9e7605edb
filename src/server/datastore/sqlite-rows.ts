/** Row shapes of the SQLite tables and their mapping to and from the datastore types. */
import type { AttestedNode, EntryInput, RegistrationEntry, Selector } from './types.js'
import { invalid, selectorKey } from './validate.js'

export interface EntryRow {
  id: string
  spiffe_id: string
  parent_id: string
  x509_svid_ttl: number
  jwt_svid_ttl: number
  hint: string
  admin: number
  downstream: number
  expires_at: number | null
  revision: number
  created_at: number
  selectors: string
  dns_names: string
  federates_with: string
}

export interface NodeRow {
  spiffe_id: string
  attestor_type: string
  cert_serial: string
  previous_cert_serial: string
  cert_not_after: number
  can_reattest: number
  banned: number
  created_at: number
  updated_at: number
  selectors: string
}

export function entryParams(id: string, e: EntryInput, revision: number, createdAt: number) {
  return {
    id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectorKey: selectorKey(e.selectors),
    selectorCount: e.selectors.length,
    x509SvidTtl: e.x509SvidTtl,
    jwtSvidTtl: e.jwtSvidTtl,
    hint: e.hint,
    admin: e.admin ? 1 : 0,
    downstream: e.downstream ? 1 : 0,
    expiresAt: e.expiresAt,
    revision,
    createdAt,
  }
}

/** SPIRE's node alias: the agent holding `agentId` (and only it) is given `spiffeId`. */
export function aliasEntry(spiffeId: string, agentId: string): EntryInput {
  return {
    spiffeId,
    parentId: agentId,
    selectors: [{ type: 'spiffe_id', value: agentId }],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: '',
    federatesWith: [],
    admin: false,
    downstream: false,
    expiresAt: null,
  }
}

export function nodeParams(n: AttestedNode) {
  return {
    spiffeId: n.spiffeId,
    attestorType: n.attestorType,
    certSerial: n.certSerial,
    previousCertSerial: n.previousCertSerial ?? '',
    certNotAfter: n.certNotAfter,
    canReattest: n.canReattest ? 1 : 0,
    banned: n.banned ? 1 : 0,
    createdAt: n.createdAt,
    updatedAt: n.updatedAt,
  }
}

export function toSelectors(json: string): Selector[] {
  return (JSON.parse(json) as [string, string][]).map(([type, value]) => ({ type, value }))
}

export function toEntry(r: EntryRow): RegistrationEntry {
  return {
    id: r.id,
    spiffeId: r.spiffe_id,
    parentId: r.parent_id,
    selectors: toSelectors(r.selectors),
    x509SvidTtl: r.x509_svid_ttl,
    jwtSvidTtl: r.jwt_svid_ttl,
    dnsNames: JSON.parse(r.dns_names) as string[],
    hint: r.hint,
    federatesWith: JSON.parse(r.federates_with) as string[],
    admin: r.admin === 1,
    downstream: r.downstream === 1,
    expiresAt: r.expires_at,
    revision: r.revision,
    createdAt: r.created_at,
  }
}

export function toNode(r: NodeRow): AttestedNode {
  return {
    spiffeId: r.spiffe_id,
    attestorType: r.attestor_type,
    selectors: toSelectors(r.selectors),
    certSerial: r.cert_serial,
    previousCertSerial: r.previous_cert_serial,
    certNotAfter: r.cert_not_after,
    canReattest: r.can_reattest === 1,
    banned: r.banned === 1,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  }
}

/** The caller's selector set as a JSON array of [type, value] (duplicates are harmless). */
export function selectorSetParam(selectors: unknown): string {
  if (!Array.isArray(selectors)) throw invalid('selectorsSubsetOf must be an array of selectors')
  const pairs = (selectors as unknown[]).map((s, i) => {
    const sel = s as Partial<Selector> | null
    if (typeof sel?.type !== 'string' || typeof sel.value !== 'string') {
      throw invalid(`selectorsSubsetOf[${i}] must be {type, value} strings`)
    }
    return [sel.type, sel.value]
  })
  return JSON.stringify(pairs)
}

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000)
}
