import { SpiffeEdgeError } from '../errors.js'

/** Why a SPIFFE ID was rejected: stable tokens tests and callers may branch on. */
export type SpiffeIdReason =
  | 'empty'
  | 'too-long'
  | 'scheme'
  | 'trust-domain-missing'
  | 'trust-domain-char'
  | 'trust-domain-too-long'
  | 'userinfo'
  | 'port'
  | 'query-or-fragment'
  | 'percent-encoding'
  | 'path-leading-slash'
  | 'path-char'
  | 'path-empty-segment'
  | 'path-dot-segment'
  | 'path-trailing-slash'

/** A string that is not a SPIFFE ID (or trust domain) as the SPIFFE ID spec defines it. */
export class SpiffeIdError extends SpiffeEdgeError {
  readonly reason: SpiffeIdReason

  constructor(reason: SpiffeIdReason, message: string) {
    super('ERR_SPIFFE_ID_INVALID', `invalid SPIFFE ID: ${message}`, {
      remedy:
        'use spiffe://<trust-domain>/<path> with a lowercase trust domain of [a-z0-9.-_] and ' +
        'path segments of [a-zA-Z0-9.-_], no empty, dot or percent-encoded parts',
    })
    this.reason = reason
  }
}

/** An X509-SVID or JWT-SVID that must not be issued or trusted; `message` says why. */
export class SvidError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_SVID_INVALID', message, {
      cause,
      remedy:
        'check the SVID against the trust bundle of its trust domain (issuer, validity, ' +
        'SPIFFE ID, key usage); re-fetch the bundle if it may be stale',
    })
  }
}

/** A SPIFFE trust bundle document that does not parse or breaks the bundle spec. */
export class BundleError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_BUNDLE_INVALID', `invalid SPIFFE bundle: ${message}`, {
      cause,
      remedy:
        'fetch the bundle again from its source; a bundle is a JWK Set whose keys have use ' +
        'x509-svid (one x5c certificate, no kid) or jwt-svid (a unique kid)',
    })
  }
}
