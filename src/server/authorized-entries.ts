/**
 * Which registration entries an agent may get SVIDs for (its own children, and descendants of node
 * aliases whose selectors it has), and SyncEntries, which sends that set or its changes.
 */
import type { CallMethods, EntryMessage } from '../transport/proto.js'
import type { AttestedNode, Datastore, RegistrationEntry } from './datastore/types.js'

export function entryMessage(e: RegistrationEntry): EntryMessage {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: e.selectors.map((s) => ({ type: s.type, value: s.value })),
    x509SvidTtl: e.x509SvidTtl,
    federatesWith: [...e.federatesWith],
    admin: e.admin,
    downstream: e.downstream,
    expiresAt: e.expiresAt ?? 0,
    dnsNames: [...e.dnsNames],
    revisionNumber: e.revision,
    jwtSvidTtl: e.jwtSvidTtl,
    hint: e.hint,
    createdAt: e.createdAt,
  }
}

/**
 * Entries this agent may issue: its own children, and descendants of node aliases it matches
 * (aliases are the entries parented to `aliasParent`, the server's ID). Sorted by entry id.
 */
export async function authorizedEntries(
  datastore: Datastore,
  aliasParent: string,
  agent: AttestedNode,
): Promise<RegistrationEntry[]> {
  const all = await datastore.listEntries()
  const byParent = new Map<string, RegistrationEntry[]>()
  for (const e of all) {
    const list = byParent.get(e.parentId) ?? []
    list.push(e)
    byParent.set(e.parentId, list)
  }
  const nodeSelectors = new Set(agent.selectors.map((s) => `${s.type}:${s.value}`))
  const roots = [agent.spiffeId]
  for (const alias of byParent.get(aliasParent) ?? []) {
    if (alias.selectors.every((s) => nodeSelectors.has(`${s.type}:${s.value}`)))
      roots.push(alias.spiffeId)
  }
  const out = new Map<string, RegistrationEntry>()
  const seen = new Set<string>()
  const queue = [...roots]
  while (queue.length > 0) {
    const parent = queue.shift()!
    if (seen.has(parent)) continue
    seen.add(parent)
    for (const e of byParent.get(parent) ?? []) {
      out.set(e.id, e)
      queue.push(e.spiffeId)
    }
  }
  return [...out.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

export async function syncEntries(
  datastore: Datastore,
  authorized: () => Promise<RegistrationEntry[]>,
  req: CallMethods['SyncEntries']['request'],
): Promise<CallMethods['SyncEntries']['response']> {
  // The revision first, then the set: an entry written in between is sent again next time at
  // worst (its revision is above the one returned), never missed.
  const revision = await datastore.currentRevision()
  if (req.sinceRevision > 0 && req.sinceRevision === revision) {
    return { revision, full: false, entries: [], deletedIds: [] }
  }
  const entries = await authorized()
  if (req.sinceRevision <= 0 || req.sinceRevision > revision) {
    return { revision, full: true, entries: entries.map(entryMessage), deletedIds: [] }
  }
  // Compare against what the agent says it holds: this catches entries whose authorization
  // changed without the entry itself changing (node aliases added, removed or re-selected).
  const known = new Map((req.known ?? []).map((k) => [k.id, k.revisionNumber]))
  const ids = new Set(entries.map((e) => e.id))
  return {
    revision,
    full: false,
    entries: entries.filter((e) => known.get(e.id) !== e.revision).map(entryMessage),
    // Only ids the agent itself sent: it learns nothing about other agents' entries.
    deletedIds: [...known.keys()].filter((id) => !ids.has(id)),
  }
}

/** Most federated bundles one agent gets in one answer (each is at most 256 KiB). */
const MAX_FEDERATED_PER_AGENT = 64

/**
 * The bundles of the trust domains the agent's entries federate with (SPIRE: GetFederatedBundle
 * for each TD in any entry's federates_with). Domains without a bundle yet are left out.
 */
export async function federatedBundlesFor(
  datastore: Datastore,
  entries: readonly RegistrationEntry[],
  ownTrustDomain: string,
): Promise<CallMethods['GetFederatedBundles']['response']> {
  const tds = new Set<string>()
  for (const e of entries)
    for (const f of e.federatesWith) tds.add(f.startsWith('spiffe://') ? f.slice(9) : f)
  tds.delete(ownTrustDomain)
  const bundles: CallMethods['GetFederatedBundles']['response']['bundles'] = []
  for (const td of [...tds].sort().slice(0, MAX_FEDERATED_PER_AGENT)) {
    const row = await datastore.getFederatedBundle(td)
    if (row) bundles.push({ trustDomain: td, bundle: row.json, sequence: row.sequence })
  }
  return { bundles }
}
