/**
 * Fetches the bundles of the trust domains we federate with from their bundle endpoints, on their
 * refresh hint, and keeps them in the datastore. A fetch that fails or returns something we will
 * not take (wrong trust domain, sequence going backwards, too big, no X.509 authority) keeps the
 * last good bundle and says so in the log; retries back off and never poll faster than 1/s.
 */
import { request } from 'node:https'
import { isIP } from 'node:net'
import type { Log } from '../../common/log.js'
import { SpiffeEdgeError } from '../../errors.js'
import { TrustBundle } from '../../spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../spiffe/id.js'
import { nodeCertFromDer } from '../../spiffe/x509-cert.js'
import type { Datastore } from '../datastore/types.js'
import type { FederationRelationship } from './config.js'

/** A SPIFFE bundle is a few certificates and keys; anything larger is refused unread. */
export const MAX_BUNDLE_BYTES = 256 * 1024
const FETCH_TIMEOUT_MS = 15_000
/** Federation spec 4.1: 5 minutes when the bundle carries no hint. */
const DEFAULT_REFRESH_S = 300
const MIN_REFRESH_S = 1
const MAX_REFRESH_S = 86_400
const FIRST_RETRY_S = 5

export interface FederationStatus {
  readonly trustDomain: string
  readonly lastSuccess?: string
  readonly lastError?: string
  readonly nextFetch?: string
}

function fail(message: string, remedy: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_FEDERATION_FETCH', message, { remedy, cause })
}

/** GET `url` over TLS; for https_spiffe the peer must present an SVID for `endpointId`. */
function get(url: URL, tls: { ca?: string; endpointId?: string }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[|\]$/g, '')
    const req = request(
      url,
      {
        method: 'GET',
        // A fresh connection every time: a pooled keep-alive socket would skip the handshake,
        // and with it the endpoint SPIFFE ID check of this relationship.
        agent: false,
        timeout: FETCH_TIMEOUT_MS,
        minVersion: 'TLSv1.2',
        ...(isIP(host) === 0 ? { servername: host } : {}),
        ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls.endpointId !== undefined
          ? {
              // The endpoint's SPIFFE ID replaces the host name check (Federation 5.2.2).
              checkServerIdentity: (_h: string, cert: { subjectaltname?: string }) => {
                const uris = (cert.subjectaltname ?? '')
                  .split(', ')
                  .filter((s) => s.startsWith('URI:'))
                  .map((s) => s.slice(4))
                if (uris.length === 1 && uris[0] === tls.endpointId) return undefined
                return new Error(
                  `the endpoint presented ${uris.join(',') || 'no SPIFFE ID'}, expected ${tls.endpointId}`,
                )
              },
            }
          : {}),
        headers: { accept: 'application/json' },
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume()
          // Redirects are not followed: the configured URL is the only one we trust (7.5.1).
          return reject(new Error(`HTTP ${res.statusCode}`))
        }
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > MAX_BUNDLE_BYTES) {
            req.destroy(new Error(`bundle larger than ${MAX_BUNDLE_BYTES} bytes`))
            return
          }
          chunks.push(c)
        })
        res.on('end', () => resolve(Buffer.concat(chunks)))
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS} ms`)))
    req.on('error', reject)
    req.end()
  })
}

function sameKeys(a: TrustBundle, b: TrustBundle): boolean {
  const keys = (x: TrustBundle) =>
    new TrustBundle({
      trustDomain: x.trustDomain,
      x509Authorities: x.x509Authorities,
      jwtAuthorities: x.jwtAuthorities,
      sequence: x.sequence,
    })
  return keys(a).equals(keys(b))
}

export interface FederationFetcherOptions {
  /** The relationships at start; upsert/remove change them while running. */
  readonly relationships: readonly FederationRelationship[]
  readonly datastore: Datastore
  /** Our own bundle, for an https_spiffe endpoint whose SPIFFE ID is in our trust domain. */
  readonly ownBundle: () => TrustBundle
  readonly log: Log
}

export class FederationFetcher {
  private readonly o: FederationFetcherOptions
  /** By trust domain; an admin API create/update/delete changes it while running. */
  private readonly rels = new Map<string, FederationRelationship>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly status = new Map<string, FederationStatus & { failures: number }>()
  /** One fetch per domain at a time; `again` when fetchSoon came during one. */
  private readonly inFlight = new Map<string, { again: boolean }>()
  private stopped = false
  /** Bumped when an operator deletes a domain's bundle: a fetch that began before it stores nothing. */
  private readonly generation = new Map<string, number>()

  constructor(o: FederationFetcherOptions) {
    this.o = o
    for (const r of o.relationships) this.rels.set(r.trustDomain, r)
  }

  start(): void {
    for (const td of this.rels.keys()) this.schedule(td, 0)
  }

  /**
   * A relationship created or changed: fetch it now. A fetch already in flight for the old one
   * stores nothing (it is no longer current) and the new one runs after it.
   */
  upsert(rel: FederationRelationship): void {
    this.rels.set(rel.trustDomain, rel)
    this.status.set(rel.trustDomain, { trustDomain: rel.trustDomain, failures: 0 })
    if (this.stopped) return
    const running = this.inFlight.get(rel.trustDomain)
    if (running) running.again = true
    else this.schedule(rel.trustDomain, 0)
  }

  /** A relationship deleted: no more fetches; one in flight stores nothing. The bundle stays. */
  remove(trustDomain: string): void {
    this.rels.delete(trustDomain)
    clearTimeout(this.timers.get(trustDomain))
    this.timers.delete(trustDomain)
    this.status.delete(trustDomain)
  }

  has(trustDomain: string): boolean {
    return this.rels.has(trustDomain)
  }

  stop(): void {
    this.stopped = true
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
  }

  /** Fetch `trustDomain` now (an operator just set its bundle: no need to wait for the backoff). */
  fetchSoon(trustDomain: string): void {
    if (!this.rels.has(trustDomain) || this.stopped) return
    const running = this.inFlight.get(trustDomain)
    if (running) running.again = true
    else this.schedule(trustDomain, 0)
  }

  /** An operator deleted `trustDomain`'s bundle: a fetch already in flight must not bring it back. */
  forget(trustDomain: string): void {
    this.generation.set(trustDomain, (this.generation.get(trustDomain) ?? 0) + 1)
  }

  statuses(): FederationStatus[] {
    return [...this.rels.values()].map((r) => {
      const { failures: _f, ...s } = this.status.get(r.trustDomain) ?? {
        trustDomain: r.trustDomain,
        failures: 0,
      }
      return s
    })
  }

  private schedule(trustDomain: string, seconds: number): void {
    if (this.stopped || !this.rels.has(trustDomain)) return
    clearTimeout(this.timers.get(trustDomain))
    const t = setTimeout(() => void this.run(trustDomain), seconds * 1000)
    t.unref()
    this.timers.set(trustDomain, t)
    const s = this.status.get(trustDomain) ?? { trustDomain, failures: 0 }
    this.status.set(trustDomain, {
      ...s,
      nextFetch: new Date(Date.now() + seconds * 1000).toISOString(),
    })
  }

  private async run(trustDomain: string): Promise<void> {
    const rel = this.rels.get(trustDomain)
    if (!rel) return
    const flight = { again: false }
    this.inFlight.set(trustDomain, flight)
    try {
      await this.runOnce(rel)
    } finally {
      this.inFlight.delete(trustDomain)
      if (flight.again) this.schedule(trustDomain, 0)
    }
  }

  private async runOnce(rel: FederationRelationship): Promise<void> {
    const current = () => this.rels.get(rel.trustDomain) === rel
    const prev = this.status.get(rel.trustDomain) ?? { trustDomain: rel.trustDomain, failures: 0 }
    try {
      const b = await this.fetchOnce(rel, current)
      if (!current()) return // changed or deleted meanwhile: upsert/remove decided what is next
      this.status.set(rel.trustDomain, {
        trustDomain: rel.trustDomain,
        lastSuccess: new Date().toISOString(),
        failures: 0,
      })
      const hint = b.refreshHintSeconds ?? DEFAULT_REFRESH_S
      this.schedule(rel.trustDomain, Math.min(MAX_REFRESH_S, Math.max(MIN_REFRESH_S, hint)))
    } catch (err) {
      if (!current()) return
      const failures = prev.failures + 1
      const kept = await this.o.datastore.getFederatedBundle(rel.trustDomain).catch(() => undefined)
      const e = err as SpiffeEdgeError
      this.o.log('warn', 'federated bundle fetch failed; keeping the last good bundle', {
        trust_domain: rel.trustDomain,
        url: rel.bundleEndpointUrl,
        error: e.message,
        kept_sequence: kept?.sequence ?? 'none',
        failures,
        ...(e.remedy ? { remedy: e.remedy } : {}),
      })
      this.status.set(rel.trustDomain, { ...prev, lastError: e.message, failures })
      // Back off (5 s, 10 s, …) but never wait longer than the bundle's own refresh hint.
      let hint = DEFAULT_REFRESH_S
      try {
        if (kept)
          hint =
            TrustBundle.fromSpiffeJson(TrustDomain.parse(rel.trustDomain), kept.json)
              .refreshHintSeconds ?? hint
      } catch {
        // a stored bundle we cannot read: the default hint
      }
      const backoff = FIRST_RETRY_S * 2 ** Math.min(failures - 1, 16)
      this.schedule(
        rel.trustDomain,
        Math.max(MIN_REFRESH_S, Math.min(hint, backoff, MAX_REFRESH_S)),
      )
    }
  }

  /** The TLS trust for an https_spiffe endpoint: the latest bundle of the endpoint ID's domain. */
  private async endpointTrust(endpointId: string): Promise<string> {
    const td = SpiffeId.parse(endpointId).trustDomain
    const own = this.o.ownBundle()
    if (td.equals(own.trustDomain)) return own.toPem()
    const row = await this.o.datastore.getFederatedBundle(td.name)
    if (!row) {
      throw fail(
        `no bundle of ${td.name} to check the endpoint ${endpointId} with`,
        `bootstrap it once: spiffe-edge server bundle set -id spiffe://${td.name} -path BUNDLE (SPIFFE or PEM)`,
      )
    }
    return TrustBundle.fromSpiffeJson(td, row.json).toPem()
  }

  /** One fetch, validated and stored; returns the bundle now held. Throws ERR_FEDERATION_FETCH. */
  async fetchOnce(
    rel: FederationRelationship,
    current: () => boolean = () => true,
  ): Promise<TrustBundle> {
    const td = TrustDomain.parse(rel.trustDomain)
    const gen = this.generation.get(td.name) ?? 0
    const tls =
      rel.profile.type === 'https_spiffe'
        ? {
            ca: await this.endpointTrust(rel.profile.endpointSpiffeId),
            endpointId: rel.profile.endpointSpiffeId,
          }
        : {}
    let body: Buffer
    try {
      body = await get(new URL(rel.bundleEndpointUrl), tls)
    } catch (err) {
      throw fail(
        `fetching ${rel.bundleEndpointUrl}: ${(err as Error).message}`,
        'check the URL, that the endpoint is up, and its certificate (profile and endpoint_spiffe_id)',
        err,
      )
    }
    let b: TrustBundle
    try {
      b = TrustBundle.fromSpiffeJson(td, body)
    } catch (err) {
      throw fail(
        `${rel.bundleEndpointUrl} did not answer with a SPIFFE bundle: ${(err as Error).message}`,
        'the URL must be the bundle endpoint of that trust domain',
        err,
      )
    }
    if (b.x509Authorities.length === 0)
      throw fail(`the bundle of ${td.name} has no X.509 authority`, 'check the foreign server')
    for (const der of b.x509Authorities) nodeCertFromDer(der)
    const stored = await this.o.datastore.getFederatedBundle(td.name)
    if (stored) {
      const cur = TrustBundle.fromSpiffeJson(td, stored.json)
      if (b.sequence < cur.sequence) {
        throw fail(
          `the bundle of ${td.name} went back from sequence ${cur.sequence} to ${b.sequence}`,
          'a replayed or rolled-back bundle is refused; check the foreign server',
        )
      }
      if (cur.equals(b)) return cur
      // The refresh hint may differ between copies of one bundle (the endpoint sets its own):
      // only a change of keys needs a new sequence.
      if (b.sequence === cur.sequence && cur.sequence > 0 && !sameKeys(cur, b)) {
        throw fail(
          `the bundle of ${td.name} changed without a new sequence (${b.sequence})`,
          'the foreign server must bump spiffe_sequence on every change',
        )
      }
    }
    if ((this.generation.get(td.name) ?? 0) !== gen)
      throw fail(
        `the bundle of ${td.name} was deleted during the fetch`,
        'bootstrap it again to federate',
      )
    if (!current())
      throw fail(
        `the relationship with ${td.name} changed or was deleted during the fetch`,
        'nothing to do: the current relationship (if any) fetches next',
      )
    await this.o.datastore.setFederatedBundle(td.name, b.toSpiffeJson(), b.sequence)
    // A delete between the check and the write: undo the write (the delete wins).
    if ((this.generation.get(td.name) ?? 0) !== gen) {
      await this.o.datastore.deleteFederatedBundle(td.name)
      throw fail(
        `the bundle of ${td.name} was deleted during the fetch`,
        'bootstrap it again to federate',
      )
    }
    this.o.log('info', 'federated bundle updated', {
      trust_domain: td.name,
      sequence: b.sequence,
      authorities: b.x509Authorities.length,
    })
    return b
  }
}
