import { SpiffeIdError } from './errors.js'

/**
 * SPIFFE IDs and trust domains, validated exactly as the SPIFFE ID spec asks. Parsing is done by
 * hand rather than with `new URL()`: WHATWG URL parsing lowercases, percent-decodes and
 * normalises dot segments, which would silently accept IDs the spec rejects.
 */

const SCHEME = 'spiffe://'
/** The spec requires support up to 2048 bytes and says not to generate longer IDs. */
export const MAX_SPIFFE_ID_BYTES = 2048
export const MAX_TRUST_DOMAIN_BYTES = 255

const encoder = new TextEncoder()

function isTrustDomainChar(c: number): boolean {
  return (
    (c >= 0x61 && c <= 0x7a) || // a-z
    (c >= 0x30 && c <= 0x39) || // 0-9
    c === 0x2e || // .
    c === 0x2d || // -
    c === 0x5f // _
  )
}

function isPathChar(c: number): boolean {
  return isTrustDomainChar(c) || (c >= 0x41 && c <= 0x5a) // plus A-Z: paths are case-sensitive
}

function checkTrustDomainName(td: string): void {
  if (td === '') throw new SpiffeIdError('trust-domain-missing', 'trust domain is missing')
  // Userinfo first: in 'user:pw@host' the ':' belongs to the userinfo, not to a port.
  if (td.includes('@')) throw new SpiffeIdError('userinfo', 'trust domain cannot contain userinfo')
  for (let i = 0; i < td.length; i++) {
    const c = td.charCodeAt(i)
    if (isTrustDomainChar(c)) continue
    // Name the URI feature the caller probably meant, so the message helps them fix it.
    if (c === 0x3a) throw new SpiffeIdError('port', 'trust domain cannot contain a port')
    if (c === 0x25) {
      throw new SpiffeIdError('percent-encoding', 'trust domain cannot be percent-encoded')
    }
    if (c === 0x3f || c === 0x23) {
      throw new SpiffeIdError('query-or-fragment', 'a query or fragment is not allowed')
    }
    throw new SpiffeIdError(
      'trust-domain-char',
      'trust domain characters are limited to lowercase letters, numbers, dots, dashes and ' +
        `underscores (found ${JSON.stringify(td[i])} at ${i})`,
    )
  }
  if (encoder.encode(td).length > MAX_TRUST_DOMAIN_BYTES) {
    throw new SpiffeIdError(
      'trust-domain-too-long',
      `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`,
    )
  }
}

function checkSegment(seg: string, last: boolean): void {
  if (seg === '') {
    if (last) throw new SpiffeIdError('path-trailing-slash', 'path cannot have a trailing slash')
    throw new SpiffeIdError('path-empty-segment', 'path cannot contain empty segments')
  }
  if (seg === '.' || seg === '..') {
    throw new SpiffeIdError('path-dot-segment', 'path cannot contain dot segments')
  }
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i)
    if (isPathChar(c)) continue
    if (c === 0x25) throw new SpiffeIdError('percent-encoding', 'path cannot be percent-encoded')
    if (c === 0x3f || c === 0x23) {
      throw new SpiffeIdError('query-or-fragment', 'a query or fragment is not allowed')
    }
    throw new SpiffeIdError(
      'path-char',
      'path segment characters are limited to letters, numbers, dots, dashes and underscores ' +
        `(found ${JSON.stringify(seg[i])})`,
    )
  }
}

/** Validates a path: '' (the trust domain itself) or '/seg(/seg)*'. */
function checkPath(path: string): void {
  if (path === '') return
  if (path[0] !== '/') throw new SpiffeIdError('path-leading-slash', 'path must start with /')
  const segs = path.slice(1).split('/')
  segs.forEach((seg, i) => {
    checkSegment(seg, i === segs.length - 1)
  })
}

function checkIdLength(id: string): void {
  if (encoder.encode(id).length > MAX_SPIFFE_ID_BYTES) {
    throw new SpiffeIdError('too-long', `SPIFFE ID is longer than ${MAX_SPIFFE_ID_BYTES} bytes`)
  }
}

/** Splits 'spiffe://td/path' into its trust domain and path, checking only the scheme. */
function splitId(s: string): { td: string; path: string } {
  if (s === '') throw new SpiffeIdError('empty', 'SPIFFE ID cannot be empty')
  // The spec's scheme is case-insensitive in theory but lowercase in every valid ID; like
  // go-spiffe, accept only the literal lowercase prefix.
  if (!s.startsWith(SCHEME)) {
    throw new SpiffeIdError('scheme', 'scheme is missing or invalid (want spiffe://)')
  }
  const rest = s.slice(SCHEME.length)
  const slash = rest.indexOf('/')
  return slash < 0 ? { td: rest, path: '' } : { td: rest.slice(0, slash), path: rest.slice(slash) }
}

export class TrustDomain {
  readonly name: string

  private constructor(name: string) {
    this.name = name
  }

  /**
   * Accepts a bare trust domain name ('example.org') or a SPIFFE ID ('spiffe://example.org/x'),
   * whose trust domain is taken, as go-spiffe does, so config may name either.
   */
  static parse(s: string): TrustDomain {
    if (s.includes(':/')) return SpiffeId.parse(s).trustDomain
    if (s === '') throw new SpiffeIdError('empty', 'trust domain cannot be empty')
    checkTrustDomainName(s)
    return new TrustDomain(s)
  }

  /** The trust domain's own SPIFFE ID, 'spiffe://<name>' (what signing CAs carry). */
  idString(): string {
    return `${SCHEME}${this.name}`
  }

  /** The trust domain's own SPIFFE ID as a SpiffeId. */
  id(): SpiffeId {
    return SpiffeId.fromPath(this, '')
  }

  equals(o: TrustDomain | undefined | null): boolean {
    return o instanceof TrustDomain && o.name === this.name
  }

  toString(): string {
    return this.name
  }
}

export class SpiffeId {
  readonly trustDomain: TrustDomain
  /** '' for the trust domain itself, otherwise '/seg(/seg)*'. */
  readonly path: string

  private constructor(trustDomain: TrustDomain, path: string) {
    this.trustDomain = trustDomain
    this.path = path
  }

  static parse(s: string): SpiffeId {
    checkIdLength(s)
    const { td, path } = splitId(s)
    checkTrustDomainName(td) // first, so an empty one is 'trust-domain-missing'
    const trustDomain = TrustDomain.parse(td) // td holds no ':' now, so it parses as a name
    checkPath(path)
    return new SpiffeId(trustDomain, path)
  }

  /** Builds an ID from a trust domain and a path of '' or '/seg(/seg)*'. */
  static fromPath(td: TrustDomain, path: string): SpiffeId {
    checkPath(path)
    checkIdLength(`${SCHEME}${td.name}${path}`)
    return new SpiffeId(td, path)
  }

  /** Builds an ID from unescaped segments; each must be a valid segment on its own. */
  static fromSegments(td: TrustDomain, ...segments: string[]): SpiffeId {
    for (const seg of segments) checkSegment(seg, false)
    return SpiffeId.fromPath(td, segments.map((s) => `/${s}`).join(''))
  }

  /** True when the ID has no path (it names the trust domain, e.g. a signing CA). */
  get isTrustDomainId(): boolean {
    return this.path === ''
  }

  toString(): string {
    return `${SCHEME}${this.trustDomain.name}${this.path}`
  }

  toJSON(): string {
    return this.toString()
  }

  equals(o: SpiffeId | undefined | null): boolean {
    return o instanceof SpiffeId && o.trustDomain.equals(this.trustDomain) && o.path === this.path
  }

  memberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td)
  }
}
