/**
 * The signed message layer of the node API. An agent proves possession of its SVID key by signing
 * each request (the key may live in a TPM or HSM, so TLS client auth cannot be assumed), and the
 * server signs each response with its own SVID key (the same bytes may cross an untrusted MQTT
 * broker). Canonical strings are line-based with a domain-separating first line, so a request
 * signature can never be replayed as a response signature or as anything else we sign.
 */
import { createHash, verify as cryptoVerify, type KeyObject, randomBytes } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'

/** How far a signed timestamp may be from our clock (both directions). */
export const MAX_CLOCK_SKEW_MS = 120_000

export interface EnvelopeSigner {
  sign(data: Uint8Array): Promise<Uint8Array>
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')
const digest = (b: Uint8Array) => createHash('sha256').update(b).digest()

export function requestSigningString(
  method: string,
  agentId: string,
  timestampMs: number,
  nonce: Uint8Array,
  body: Uint8Array,
): Uint8Array {
  return Buffer.from(
    `spiffe-edge/node/v1 request\n${method}\n${agentId}\n${timestampMs}\n${b64(nonce)}\n${b64(digest(body))}`,
  )
}

export function responseSigningString(
  method: string,
  timestampMs: number,
  requestNonce: Uint8Array,
  body: Uint8Array,
  error: { code: number; message: string; reason: string },
): Uint8Array {
  return Buffer.from(
    `spiffe-edge/node/v1 response\n${method}\n${timestampMs}\n${b64(requestNonce)}\n${b64(digest(body))}\n${error.code}\n${b64(Buffer.from(error.message))}\n${error.reason}`,
  )
}

export function newNonce(): Uint8Array {
  return new Uint8Array(randomBytes(16))
}

/** Verifies a signature made by a Signer (ECDSA as IEEE-P1363 r||s, RSA PKCS#1 v1.5). */
export function verifySignature(key: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    if (key.asymmetricKeyType === 'ec') {
      const hash = key.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'sha384' : 'sha256'
      return cryptoVerify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, signature)
    }
    if (key.asymmetricKeyType === 'rsa') return cryptoVerify('sha256', data, key, signature)
    return false
  } catch {
    return false
  }
}

export class AuthError extends SpiffeEdgeError {
  /** A stable machine value: stale, replay, signature, unknown_agent, banned, … */
  readonly reason: string

  constructor(reason: string, message: string, remedy: string) {
    super('ERR_AUTH', message, { remedy })
    this.reason = reason
  }
}

/** Refuses timestamps outside the skew window, so the replay cache only needs that window. */
export function checkTimestamp(timestampMs: number, nowMs: number): void {
  if (!Number.isFinite(timestampMs) || Math.abs(nowMs - timestampMs) > MAX_CLOCK_SKEW_MS) {
    throw new AuthError(
      'stale',
      `signed timestamp ${timestampMs} is more than ${MAX_CLOCK_SKEW_MS / 1000}s from now`,
      'synchronise the clock (NTP) on the agent and the server',
    )
  }
}

/**
 * Nonces seen within the skew window. Bounded: when full of unexpired nonces it refuses new ones
 * (fail closed) rather than forgetting and so admitting replays.
 */
export class ReplayCache {
  private readonly seen = new Map<string, number>()
  private readonly max: number

  constructor(max = 200_000) {
    this.max = max
  }

  check(nonce: Uint8Array, nowMs: number): void {
    if (nonce.length < 16) {
      throw new AuthError('nonce', 'request nonce shorter than 16 bytes', 'send 16 random bytes')
    }
    const key = b64(nonce)
    const expiry = this.seen.get(key)
    if (expiry !== undefined && expiry > nowMs) {
      throw new AuthError(
        'replay',
        'this request was already received',
        'send a fresh nonce per request',
      )
    }
    if (this.seen.size >= this.max) {
      for (const [k, e] of this.seen) if (e <= nowMs) this.seen.delete(k)
      if (this.seen.size >= this.max) {
        throw new AuthError('busy', 'too many requests in the replay window', 'retry later')
      }
    }
    // Map keeps insertion order: old entries are pruned from the front as they expire.
    this.seen.set(key, nowMs + 2 * MAX_CLOCK_SKEW_MS)
    for (const [k, e] of this.seen) {
      if (e > nowMs) break
      this.seen.delete(k)
    }
  }

  get size(): number {
    return this.seen.size
  }
}
