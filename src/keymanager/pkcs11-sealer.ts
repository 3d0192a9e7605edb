/**
 * The PKCS#11 sealer, for agents whose key manager is a token: the key-encryption key is HKDF over
 * the token's HMAC-SHA-256 (a 256-bit CKK_GENERIC_SECRET key, sensitive, never extractable, made
 * in the token) of a domain-separated per-wrap salt. HMAC is deterministic, so the same token key
 * derives the same KEK after any restart, and only that key can: the cache copied next to another
 * token (even one holding a key of the same label) does not open, nor does one whose key was
 * deleted. The key's label and random CKA_ID are the AAD, so a wrapped DEK names its exact key.
 * HMAC rather than AES key wrap: CKM_SHA256_HMAC is the mechanism tokens agree on most, and it
 * lets this sealer share the TPM sealer's wrap format (sealer.ts).
 */
import { createHash, hkdf, randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import type { Pkcs11KeyManager } from './pkcs11/manager.js'
import { findSecretKey, generateHmacKey, hmacSha256 } from './pkcs11/secret.js'
import { type CacheSealer, sealError, unwrapWith, wrapWith } from './sealer.js'

const hkdfAsync = promisify(hkdf)
export const PKCS11_KEK_ID = 'cache-kek'
const DOMAIN = 'spiffe-edge cache kek v1 pkcs11\n'

export class Pkcs11Sealer implements CacheSealer {
  readonly kind = 'pkcs11'
  readonly warning = undefined
  private readonly keys: Pkcs11KeyManager
  private readonly label: string

  /** `keys`: the agent's PKCS#11 key manager (its token, PIN and label prefix); owned by the caller. */
  constructor(keys: Pkcs11KeyManager, id = PKCS11_KEK_ID) {
    this.keys = keys
    this.label = keys.labelOf(id)
  }

  /** The key's CKA_ID, making the key first when `create` (a new cache) and there is none. */
  private async keyId(create: boolean): Promise<Buffer> {
    try {
      return await this.keys.inSession('finding the cache key', (p, s) => {
        // Find and create in one synchronous stretch: no other call of ours can interleave.
        const found = findSecretKey(p, s, this.label)
        if (found) return found.ckaId
        if (!create) throw sealError(`the token holds no cache key ${this.label}`)
        return generateHmacKey(p, s, this.label, randomBytes(16)).ckaId
      })
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_CACHE_SEAL') throw err
      throw sealError('cannot reach the cache key in the token', err)
    }
  }

  private derive(ckaId: Buffer) {
    return async (salt: Uint8Array) => {
      const msg = Buffer.concat([Buffer.from(DOMAIN), salt])
      let mac: Uint8Array
      try {
        mac = await this.keys.inSession('MAC with the cache key', (p, s) => {
          const k = findSecretKey(p, s, this.label)
          // The key changed between lookup and use (deleted and re-made): not the one wrapped for.
          if (k === undefined || !k.ckaId.equals(ckaId))
            throw sealError('the token cache key changed')
          return hmacSha256(p, s, k.handle, msg)
        })
      } catch (err) {
        if ((err as { code?: string }).code === 'ERR_CACHE_SEAL') throw err
        throw sealError('the token cannot use the cache key', err)
      }
      return new Uint8Array(await hkdfAsync('sha256', mac, salt, 'spiffe-edge cache kek v1', 32))
    }
  }

  private aad(ckaId: Buffer): Uint8Array {
    return createHash('sha256')
      .update('pkcs11\0')
      .update(this.label)
      .update('\0')
      .update(ckaId)
      .digest()
  }

  async wrap(dek: Uint8Array): Promise<Uint8Array> {
    const id = await this.keyId(true)
    return wrapWith(dek, this.aad(id), this.derive(id))
  }

  async unwrap(wrapped: Uint8Array): Promise<Uint8Array> {
    const id = await this.keyId(false)
    return unwrapWith(wrapped, this.aad(id), this.derive(id))
  }
}
