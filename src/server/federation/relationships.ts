/**
 * Federation relationships as the admin API sees them (SPIRE's `federation create|list|show|
 * update|delete|refresh`). Two kinds: the config file's (`federates_with`, fixed until restart)
 * and those created through the API (kept in the datastore, survive restarts). As in SPIRE the
 * config file's take precedence; unlike SPIRE they are listed too (with `source: config`) and the
 * API refuses to create, update or delete one of them (ERR_FEDERATION_STATIC), so an operator is
 * never told a change happened that the next restart would undo.
 */
import type { Log } from '../../common/log.js'
import { type ErrorCode, isSpiffeEdgeError, SpiffeEdgeError } from '../../errors.js'
import type { TrustBundle } from '../../spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../spiffe/id.js'
import type { Datastore, FederationRelationshipRow } from '../datastore/types.js'
import { checkRelationship, type FederationRelationship, MAX_RELATIONSHIPS } from './config.js'
import type { FederationFetcher } from './fetcher.js'

/** One relationship in a create/update request (snake_case, as every admin API body). */
export interface RelationshipInput {
  readonly trust_domain?: unknown
  readonly bundle_endpoint_url?: unknown
  readonly bundle_endpoint_profile?: unknown
  readonly endpoint_spiffe_id?: unknown
  /** The first bundle (SPIRE's trustDomainBundle): PEM text or SPIFFE bundle JSON text. */
  readonly trust_domain_bundle?: unknown
  readonly trust_domain_bundle_format?: unknown
}

export interface BatchResult {
  readonly status: { readonly code: 'OK' | ErrorCode; readonly message: string; remedy?: string }
  readonly trust_domain?: string
  readonly federation_relationship?: Record<string, unknown>
}

export interface RelationshipAdmin {
  list(): Record<string, unknown>[]
  show(trustDomain: string): Record<string, unknown>
  create(items: readonly unknown[]): Promise<BatchResult[]>
  update(items: readonly unknown[]): Promise<BatchResult[]>
  delete(trustDomain: string): Promise<void>
  /** Fetch now (SPIRE's `federation refresh`); the result shows in `show`/`list`. */
  refresh(trustDomain: string): void
}

export interface RelationshipAdminOptions {
  readonly config: readonly FederationRelationship[]
  readonly datastore: Datastore
  readonly fetcher: FederationFetcher
  readonly ownTrustDomain: TrustDomain
  /** A foreign bundle parsed and checked (ERR_USAGE), not stored. */
  readonly parseBundle: (td: TrustDomain, text: string, format: 'pem' | 'spiffe') => TrustBundle
  readonly foreignDomain: (id: string) => TrustDomain
  readonly log: Log
}

/** A batch is at most this many relationships (there can be no more than that anyway). */
export const MAX_BATCH = MAX_RELATIONSHIPS

function fromRow(r: FederationRelationshipRow): FederationRelationship {
  return {
    trustDomain: r.trustDomain,
    bundleEndpointUrl: r.bundleEndpointUrl,
    profile:
      r.profile === 'https_spiffe'
        ? { type: 'https_spiffe', endpointSpiffeId: r.endpointSpiffeId }
        : { type: 'https_web' },
  }
}

function tdName(id: string): string {
  try {
    return TrustDomain.parse(id.replace(/^spiffe:\/\//, '')).name
  } catch {
    throw new SpiffeEdgeError('ERR_USAGE', `'${id}' is not a trust domain`, {
      remedy: 'pass the trust domain as example.org or spiffe://example.org',
    })
  }
}

function notFound(td: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no federation relationship with ${td}`, {
    remedy: 'see `spiffe-edge server federation list`',
  })
}

function staticRefused(td: string, what: string): SpiffeEdgeError {
  return new SpiffeEdgeError(
    'ERR_FEDERATION_STATIC',
    `cannot ${what} the relationship with ${td}: it comes from the config file ([server.federation.federates_with."${td}"])`,
    {
      remedy:
        'change it in the server config and restart; the admin API changes only relationships it created',
    },
  )
}

export async function startRelationshipAdmin(
  o: RelationshipAdminOptions,
): Promise<RelationshipAdmin> {
  const fromConfig = new Map(o.config.map((r) => [r.trustDomain, r]))
  const fromApi = new Map<string, FederationRelationship>()
  for (const row of await o.datastore.listFederationRelationships()) {
    if (fromConfig.has(row.trustDomain)) {
      // SPIRE's rule: the config file's relationship wins; the stored one is kept, not used.
      o.log(
        'warn',
        'federation relationship in both the config file and the datastore; using the config file',
        {
          trust_domain: row.trustDomain,
          remedy:
            'remove it from one of them (`spiffe-edge server federation delete` after removing it from the config)',
        },
      )
      continue
    }
    const rel = fromRow(row)
    fromApi.set(row.trustDomain, rel)
    o.fetcher.upsert(rel)
  }

  // Mutations one at a time: the datastore write and the fetcher change of one must not
  // interleave with another's (an update racing a delete would leave the fetcher polling).
  let queue: Promise<unknown> = Promise.resolve()
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = queue.then(fn, fn)
    queue = p.catch(() => undefined)
    return p
  }

  const view = (r: FederationRelationship, source: 'config' | 'api') => {
    const st = o.fetcher.statuses().find((s) => s.trustDomain === r.trustDomain)
    const { trustDomain: _td, ...status } = st ?? { trustDomain: '' }
    return {
      trust_domain: r.trustDomain,
      bundle_endpoint_url: r.bundleEndpointUrl,
      bundle_endpoint_profile: r.profile.type,
      ...(r.profile.type === 'https_spiffe'
        ? { endpoint_spiffe_id: r.profile.endpointSpiffeId }
        : {}),
      source,
      ...status,
    }
  }

  /** Checks one item; returns the relationship and the bundle to store with it, if any. */
  const check = (item: unknown, what: string) => {
    if (item === null || typeof item !== 'object' || Array.isArray(item))
      throw new SpiffeEdgeError('ERR_USAGE', 'a relationship must be a JSON object', {
        remedy: 'see `spiffe-edge server federation create --help`',
      })
    const i = item as RelationshipInput
    const rel = checkRelationship(
      {
        trustDomain: i.trust_domain,
        bundleEndpointUrl: i.bundle_endpoint_url,
        profile: i.bundle_endpoint_profile,
        endpointSpiffeId: i.endpoint_spiffe_id,
      },
      o.ownTrustDomain.name,
    )
    if (fromConfig.has(rel.trustDomain)) throw staticRefused(rel.trustDomain, what)
    let bundle: TrustBundle | undefined
    if (i.trust_domain_bundle !== undefined) {
      const format = i.trust_domain_bundle_format ?? 'pem'
      if (typeof i.trust_domain_bundle !== 'string' || (format !== 'pem' && format !== 'spiffe'))
        throw new SpiffeEdgeError(
          'ERR_USAGE',
          'trust_domain_bundle must be text in pem or spiffe format',
          {
            remedy: 'pass -trustDomainBundlePath FILE -trustDomainBundleFormat pem|spiffe',
          },
        )
      // SPIRE: for https_spiffe the bundle is the endpoint's trust domain's (the one its
      // certificate is checked with), which may differ from the relationship's.
      const bundleTd =
        rel.profile.type === 'https_spiffe'
          ? SpiffeId.parse(rel.profile.endpointSpiffeId).trustDomain.name
          : rel.trustDomain
      const td = o.foreignDomain(bundleTd)
      bundle = o.parseBundle(td, i.trust_domain_bundle, format)
    }
    return { rel, bundle }
  }

  const storeBundle = async (b: TrustBundle) => {
    await o.datastore.setFederatedBundle(b.trustDomain.name, b.toSpiffeJson(), b.sequence)
    o.log('info', 'federated bundle set with a federation relationship', {
      trust_domain: b.trustDomain.name,
      sequence: b.sequence,
    })
  }

  const row = (rel: FederationRelationship) => ({
    trustDomain: rel.trustDomain,
    bundleEndpointUrl: rel.bundleEndpointUrl,
    profile: rel.profile.type,
    endpointSpiffeId: rel.profile.type === 'https_spiffe' ? rel.profile.endpointSpiffeId : '',
  })

  const batch = async (
    items: readonly unknown[],
    one: (item: unknown) => Promise<FederationRelationship>,
  ): Promise<BatchResult[]> => {
    if (items.length === 0 || items.length > MAX_BATCH)
      throw new SpiffeEdgeError('ERR_USAGE', `pass 1 to ${MAX_BATCH} relationships`, {
        remedy: 'split the -data file',
      })
    const out: BatchResult[] = []
    for (const item of items) {
      try {
        const rel = await serial(() => one(item))
        out.push({
          status: { code: 'OK', message: 'OK' },
          trust_domain: rel.trustDomain,
          federation_relationship: view(rel, 'api'),
        })
      } catch (err) {
        if (!isSpiffeEdgeError(err)) throw err
        const td = (item as RelationshipInput | null)?.trust_domain
        out.push({
          status: err.toJSON(),
          ...(typeof td === 'string' ? { trust_domain: td } : {}),
        })
      }
    }
    return out
  }

  /** A relationship now in the datastore: served, fetched from now on, logged. */
  const stored = (rel: FederationRelationship, what: 'created' | 'updated') => {
    fromApi.set(rel.trustDomain, rel)
    o.fetcher.upsert(rel)
    o.log('info', `federation relationship ${what}`, {
      trust_domain: rel.trustDomain,
      url: rel.bundleEndpointUrl,
      profile: rel.profile.type,
    })
    return rel
  }

  const admin: RelationshipAdmin = {
    list: () =>
      [
        ...[...fromConfig.values()].map((r) => view(r, 'config')),
        ...[...fromApi.values()].map((r) => view(r, 'api')),
      ].sort((a, b) => a.trust_domain.localeCompare(b.trust_domain)),
    show(id) {
      const td = tdName(id)
      const c = fromConfig.get(td)
      if (c) return view(c, 'config')
      const a = fromApi.get(td)
      if (a) return view(a, 'api')
      throw notFound(td)
    },
    create: (items) =>
      batch(items, async (item) => {
        const { rel, bundle } = check(item, 'create')
        await o.datastore.createFederationRelationship(
          row(rel),
          MAX_RELATIONSHIPS - fromConfig.size,
        )
        if (bundle) {
          try {
            await storeBundle(bundle)
          } catch (err) {
            // All or nothing: a relationship without the bundle it was created with would fail
            // its first fetch for a reason the operator was not told about.
            await o.datastore.deleteFederationRelationship(rel.trustDomain).catch(() => undefined)
            throw err
          }
        }
        return stored(rel, 'created')
      }),
    update: (items) =>
      batch(items, async (item) => {
        const { rel, bundle } = check(item, 'update')
        await o.datastore.updateFederationRelationship(row(rel))
        if (bundle) await storeBundle(bundle)
        return stored(rel, 'updated')
      }),
    delete: (id) =>
      serial(async () => {
        const td = tdName(id)
        if (fromConfig.has(td)) throw staticRefused(td, 'delete')
        await o.datastore.deleteFederationRelationship(td)
        fromApi.delete(td)
        o.fetcher.remove(td)
        o.log('info', 'federation relationship deleted; its bundle stays until `bundle delete`', {
          trust_domain: td,
        })
      }),
    refresh(id) {
      const td = tdName(id)
      if (!o.fetcher.has(td)) throw notFound(td)
      o.fetcher.fetchSoon(td)
    },
  }
  return admin
}
