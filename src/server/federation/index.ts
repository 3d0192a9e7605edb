/**
 * Federation on the server: the bundle endpoint, the fetcher for the trust domains we federate
 * with, and what the admin API does with foreign bundles (SPIRE's `bundle list|show|set|delete|
 * count`). Foreign bundles live in their own datastore table, never beside our own.
 */
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import { parsePemCertificates, TrustBundle } from '../../spiffe/bundle.js'
import { TrustDomain } from '../../spiffe/id.js'
import type { Datastore } from '../datastore/types.js'
import type { FederationConfig } from './config.js'
import { startBundleEndpoint, type TlsCredentials } from './endpoint.js'
import { FederationFetcher, type FederationStatus, MAX_BUNDLE_BYTES } from './fetcher.js'
import { type RelationshipAdmin, startRelationshipAdmin } from './relationships.js'

export interface ForeignBundleView {
  readonly trust_domain: string
  readonly sequence: number
  readonly updated_at: number
  readonly bundle: string
}

/** The admin API's view of foreign bundles. */
export interface ForeignBundleAdmin {
  list(format: 'pem' | 'spiffe'): Promise<ForeignBundleView[]>
  show(id: string, format: 'pem' | 'spiffe'): Promise<ForeignBundleView>
  set(id: string, text: string, format: 'pem' | 'spiffe'): Promise<ForeignBundleView>
  delete(id: string): Promise<void>
  count(): Promise<number>
  status(): FederationStatus[]
  /** Relationships: the config file's and the admin API's (`federation …`), with fetch status. */
  readonly relationships: RelationshipAdmin
}

export interface FederationOptions {
  readonly config: FederationConfig | undefined
  readonly datastore: Datastore
  readonly trustDomain: TrustDomain
  readonly ownBundle: () => TrustBundle
  readonly identity: () => TlsCredentials
  readonly log: Log
}

export interface RunningFederation {
  readonly port: number | undefined
  readonly admin: ForeignBundleAdmin
  identityChanged(): void
  close(): Promise<void>
}

function usage(message: string, remedy: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_USAGE', message, { remedy })
}

/** A foreign bundle from an operator (PEM CA certificates or SPIFFE JSON), checked, not stored. */
export function parseForeignBundle(
  td: TrustDomain,
  text: string,
  format: 'pem' | 'spiffe',
): TrustBundle {
  if (Buffer.byteLength(text) > MAX_BUNDLE_BYTES)
    throw usage(`the bundle is over ${MAX_BUNDLE_BYTES} bytes`, 'pass a single bundle')
  let b: TrustBundle
  if (format === 'pem') {
    const certs = parsePemCertificates(text)
    if (certs.length === 0)
      throw usage('no PEM CERTIFICATE in the bundle', 'pass -format spiffe for SPIFFE JSON')
    // Sequence 0: the next fetch from the endpoint (any sequence) replaces it.
    b = new TrustBundle({ trustDomain: td, x509Authorities: certs, sequence: 0 })
  } else {
    try {
      b = TrustBundle.fromSpiffeJson(td, text)
    } catch (err) {
      throw usage(`not a SPIFFE bundle: ${(err as Error).message}`, 'pass -format pem for PEM')
    }
  }
  if (b.x509Authorities.length === 0)
    throw usage('the bundle has no X.509 authority', 'pass the CA certificates of that domain')
  return b
}

/** `spiffe://td` or `td`, never our own trust domain. */
function foreignDomain(id: string, own: TrustDomain): TrustDomain {
  let td: TrustDomain
  try {
    td = TrustDomain.parse(id.startsWith('spiffe://') ? id.slice('spiffe://'.length) : id)
  } catch {
    throw usage(`'${id}' is not a trust domain`, 'pass -id spiffe://<trust domain>')
  }
  if (td.equals(own))
    throw usage(
      `${td.name} is our own trust domain`,
      'our own bundle comes from the CA; `bundle set` is for foreign trust domains',
    )
  return td
}

export async function startFederation(o: FederationOptions): Promise<RunningFederation> {
  const ds = o.datastore
  const view = (
    row: { trustDomain: string; json: string; sequence: number; updatedAt: number },
    format: 'pem' | 'spiffe',
  ): ForeignBundleView => ({
    trust_domain: row.trustDomain,
    sequence: row.sequence,
    updated_at: row.updatedAt,
    bundle:
      format === 'pem'
        ? TrustBundle.fromSpiffeJson(TrustDomain.parse(row.trustDomain), row.json).toPem()
        : row.json,
  })
  const fetcher = new FederationFetcher({
    relationships: o.config?.federatesWith ?? [],
    datastore: ds,
    ownBundle: o.ownBundle,
    log: o.log,
  })
  const relationships = await startRelationshipAdmin({
    config: o.config?.federatesWith ?? [],
    datastore: ds,
    fetcher,
    ownTrustDomain: o.trustDomain,
    parseBundle: parseForeignBundle,
    foreignDomain: (id) => foreignDomain(id, o.trustDomain),
    log: o.log,
  })
  const be = o.config?.bundleEndpoint
  const endpoint = be
    ? await startBundleEndpoint({
        config: be,
        identity: o.identity,
        log: o.log,
        bundleJson: () => {
          const b = o.ownBundle()
          return new TrustBundle({
            trustDomain: b.trustDomain,
            x509Authorities: b.x509Authorities,
            jwtAuthorities: b.jwtAuthorities,
            sequence: b.sequence,
            refreshHintSeconds: be.refreshHintSeconds,
          }).toSpiffeJson()
        },
      })
    : undefined
  fetcher.start()
  const admin: ForeignBundleAdmin = {
    async list(format) {
      return (await ds.listFederatedBundles()).map((r) => view(r, format))
    },
    async show(id, format) {
      const td = foreignDomain(id, o.trustDomain)
      const row = await ds.getFederatedBundle(td.name)
      if (!row)
        throw new SpiffeEdgeError('ERR_DATASTORE_NOT_FOUND', `no bundle for ${td.name}`, {
          remedy: 'list them with `spiffe-edge server bundle list`',
        })
      return view(row, format)
    },
    async set(id, text, format) {
      const td = foreignDomain(id, o.trustDomain)
      const b = parseForeignBundle(td, text, format)
      await ds.setFederatedBundle(td.name, b.toSpiffeJson(), b.sequence)
      o.log('info', 'federated bundle set by an operator', {
        trust_domain: td.name,
        sequence: b.sequence,
      })
      fetcher.fetchSoon(td.name)
      return view((await ds.getFederatedBundle(td.name))!, 'spiffe')
    },
    async delete(id) {
      const td = foreignDomain(id, o.trustDomain)
      fetcher.forget(td.name) // before the delete: a fetch in flight then stores nothing
      await ds.deleteFederatedBundle(td.name)
      o.log('info', 'federated bundle deleted', { trust_domain: td.name })
    },
    async count() {
      return (await ds.listFederatedBundles()).length
    },
    status: () => fetcher.statuses(),
    relationships,
  }
  return {
    port: endpoint?.port,
    admin,
    identityChanged: () => endpoint?.identityChanged(),
    close: async () => {
      fetcher.stop()
      await endpoint?.close()
    },
  }
}
