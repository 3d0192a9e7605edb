/**
 * Sealers: what protects the agent's on-disk SVID cache. The cache is encrypted with a random
 * data-encryption key (DEK, AES-256-GCM); a sealer wraps that DEK with a key the attacker who
 * copies the data dir does not get (a TPM-resident key, later a PKCS#11 token key) or, for
 * software-only agents, with a key file that only file permissions protect. The interface is
 * small on purpose: wrap once when a cache is created, unwrap once at start.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'

export interface CacheSealer {
  /** Stored with the cache: a cache sealed by one kind is never handed to another. */
  readonly kind: string
  /** Said once at start when the protection is weak (software file); undefined for hardware. */
  readonly warning: string | undefined
  /** Wraps a 32-byte DEK; the result is stored next to the cache and may be public. */
  wrap(dek: Uint8Array): Promise<Uint8Array>
  /** The DEK back, or ERR_CACHE_SEAL when this sealer cannot open it (other TPM, tampering). */
  unwrap(wrapped: Uint8Array): Promise<Uint8Array>
}

export const DEK_BYTES = 32
const WRAP_VERSION = 1
const IV = 12
const TAG = 16
/** version(1) | salt(32) | iv(12) | tag(16) | wrapped DEK(32). */
export const WRAPPED_BYTES = 1 + 32 + IV + TAG + DEK_BYTES

export function sealError(message: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_CACHE_SEAL', message, {
    cause,
    remedy:
      'nothing to do: the agent discards the cache and fetches its SVIDs again from the server',
  })
}

/**
 * AES-256-GCM of the DEK under a key-encryption key derived per wrap (`kek(salt)`), the sealer's
 * kind and `binding` (e.g. the TPM key's public area) as AAD: a wrapped DEK moved to another
 * sealer, or a different KEK, fails authentication instead of yielding a wrong key.
 */
export async function wrapWith(
  dek: Uint8Array,
  aad: Uint8Array,
  kek: (salt: Uint8Array) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  if (dek.length !== DEK_BYTES) throw sealError(`a cache key is ${DEK_BYTES} bytes`)
  const salt = randomBytes(32)
  const iv = randomBytes(IV)
  const c = createCipheriv('aes-256-gcm', await kek(salt), iv)
  c.setAAD(aad)
  const ct = Buffer.concat([c.update(dek), c.final()])
  return new Uint8Array(Buffer.concat([Buffer.from([WRAP_VERSION]), salt, iv, c.getAuthTag(), ct]))
}

export async function unwrapWith(
  wrapped: Uint8Array,
  aad: Uint8Array,
  kek: (salt: Uint8Array) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  if (wrapped.length !== WRAPPED_BYTES || wrapped[0] !== WRAP_VERSION) {
    throw sealError('the wrapped cache key has the wrong size or version')
  }
  const b = Buffer.from(wrapped)
  const salt = b.subarray(1, 33)
  const iv = b.subarray(33, 33 + IV)
  const tag = b.subarray(33 + IV, 33 + IV + TAG)
  const ct = b.subarray(33 + IV + TAG)
  const key = await kek(salt)
  try {
    const d = createDecipheriv('aes-256-gcm', key, iv)
    d.setAAD(aad)
    d.setAuthTag(tag)
    return new Uint8Array(Buffer.concat([d.update(ct), d.final()]))
  } catch (err) {
    throw sealError(
      'the cache key does not unwrap with this sealer (another machine or tampering)',
      err,
    )
  }
}
