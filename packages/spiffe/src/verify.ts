/**
 * Peer verification for TLS: the peer chain must be an X509-SVID verifying against the bundle of
 * the peer's own trust domain (the core's validateX509Svid), then pass the authorizer. OpenSSL
 * has already checked the chain against the union of the trusted bundles during the handshake;
 * this adds what OpenSSL cannot express: trust per trust domain and the SPIFFE leaf rules.
 *
 * Results are cached per (chain, bundle generation), bounded, and the cached validity window is
 * re-checked on each use: a reconnecting peer costs one Map lookup, not an ASN.1 parse.
 */
import { X509Certificate } from 'node:crypto'
import type { PeerCertificate } from 'node:tls'
import { validateX509Svid } from '../../../src/spiffe/x509-svid-validate.js'
import type { Authorizer } from './authorize.js'
import { PeerUnauthorizedError } from './errors.js'
import type { SpiffeId } from './svid.js'
import type { X509SvidSource } from './x509-source.js'

/** A peer chain longer than this is refused before any parsing. */
export const MAX_PEER_CHAIN = 8
const CACHE_MAX = 1024

/** Leaf fingerprints this process verified → their IDs, for peerSpiffeId() on client sockets. */
const verifiedLeaves = new Map<string, SpiffeId>()

export function verifiedPeerId(cert: PeerCertificate): SpiffeId | undefined {
  return cert.fingerprint256 === undefined ? undefined : verifiedLeaves.get(cert.fingerprint256)
}

interface Verified {
  readonly id: SpiffeId
  readonly notBefore: number
  readonly notAfter: number
}

interface CertLink {
  readonly raw: Buffer
  readonly fingerprint256: string
  readonly issuerCertificate?: CertLink
}

/** The chain Node reports (leaf first), from a detailed PeerCertificate; [] when none. */
export function peerChain(cert: PeerCertificate): CertLink[] {
  const out: CertLink[] = []
  let c: CertLink | undefined =
    (cert as CertLink).raw === undefined ? undefined : (cert as CertLink)
  while (c !== undefined && out.length <= MAX_PEER_CHAIN) {
    out.push(c)
    // A self-signed root names itself as its issuer.
    c =
      c.issuerCertificate !== undefined && c.issuerCertificate !== c
        ? c.issuerCertificate
        : undefined
  }
  return out
}

export class PeerVerifier {
  private readonly cache = new Map<string, Verified>()

  private readonly source: X509SvidSource

  constructor(source: X509SvidSource) {
    this.source = source
  }

  /** The peer's verified SPIFFE ID, or a PeerUnauthorizedError. */
  verify(cert: PeerCertificate, authorize: Authorizer, now = Date.now()): SpiffeId {
    const chain = peerChain(cert)
    if (chain.length === 0) throw new PeerUnauthorizedError('the peer presented no certificate')
    if (chain.length > MAX_PEER_CHAIN) {
      throw new PeerUnauthorizedError(`the peer chain is longer than ${MAX_PEER_CHAIN}`)
    }
    const key = `${this.source.generation}|${chain.map((c) => c.fingerprint256).join(',')}`
    let v = this.cache.get(key)
    if (v === undefined) {
      v = this.validate(chain, now)
      if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!)
      this.cache.set(key, v)
    }
    if (now < v.notBefore || now > v.notAfter) {
      throw new PeerUnauthorizedError('the peer SVID is not valid now', v.id.toString())
    }
    if (!authorize(v.id)) {
      throw new PeerUnauthorizedError(`peer ${v.id} is not authorized`, v.id.toString())
    }
    const fp = chain[0]!.fingerprint256
    if (!verifiedLeaves.has(fp)) {
      if (verifiedLeaves.size >= CACHE_MAX)
        verifiedLeaves.delete(verifiedLeaves.keys().next().value!)
      verifiedLeaves.set(fp, v.id)
    }
    return v.id
  }

  private validate(chain: CertLink[], now: number): Verified {
    const bundles = this.source.x509Bundles()
    let r: ReturnType<typeof validateX509Svid>
    try {
      r = validateX509Svid(
        chain.map((c) => new Uint8Array(c.raw)),
        (td) => bundles.get(td.name),
        new Date(now),
      )
    } catch (err) {
      throw new PeerUnauthorizedError(
        `the peer SVID does not verify: ${(err as Error).message}`,
        undefined,
        err,
      )
    }
    let notBefore = 0
    let notAfter = Number.POSITIVE_INFINITY
    for (const der of r.path) {
      const c = new X509Certificate(der)
      notBefore = Math.max(notBefore, Date.parse(c.validFrom))
      notAfter = Math.min(notAfter, Date.parse(c.validTo))
    }
    return { id: r.spiffeId, notBefore, notAfter }
  }
}
