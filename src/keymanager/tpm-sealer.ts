/**
 * The TPM sealer. The key-encryption key is derived from a TPM-resident RSA-2048 signing key
 * (fixedTPM, fixedParent, sensitiveDataOrigin, under the SRK): HKDF over its RSASSA-PKCS1-v1_5
 * signature of a domain-separated digest of a per-wrap salt. PKCS#1 v1.5 signatures are
 * deterministic, so the same TPM derives the same KEK after any restart, and only that TPM can:
 * the key's blob does not load under another TPM's SRK. This needs no new addon command (the
 * addon's Sign); the price is no PCR policy yet (that needs PolicyPCR + Unseal in the addon).
 * The digest is never one a protocol would ask this key to sign: the key signs nothing else.
 */
import { createHash, hkdf, verify } from 'node:crypto'
import { promisify } from 'node:util'
import type { TpmContext } from '../tpm/context.js'
import { type CacheSealer, sealError, unwrapWith, wrapWith } from './sealer.js'
import { type TpmKey, TpmKeyManager } from './tpm.js'

const hkdfAsync = promisify(hkdf)
const KEK_ID = 'cache-kek'
const DOMAIN = 'spiffe-edge cache kek v1 tpm\n'

export class TpmSealer implements CacheSealer {
  readonly kind = 'tpm'
  readonly warning = undefined
  private readonly keys: TpmKeyManager
  private key: Promise<TpmKey> | undefined

  /** `dir` holds the KEK's blob (0600, useless without this TPM). */
  constructor(tpm: TpmContext, dir: string) {
    this.keys = new TpmKeyManager(tpm, dir)
  }

  private kekKey(create: boolean): Promise<TpmKey> {
    this.key ??= (async () => {
      const k = await this.keys.getKey(KEK_ID)
      if (k) return k
      if (!create) throw sealError('the TPM cache key is missing')
      // Created once (RSA key generation can take seconds on a real chip); never replaced while
      // it exists, since every cache this agent wrote depends on it.
      return this.keys.generateKey(KEK_ID, 'rsa-2048')
    })()
    this.key.catch(() => {
      this.key = undefined
    })
    return this.key
  }

  private derive(create: boolean) {
    return async (salt: Uint8Array) => {
      const k = await this.kekKey(create)
      const msg = Buffer.concat([Buffer.from(DOMAIN), salt])
      let sig: Uint8Array
      try {
        sig = await k.sign(msg)
      } catch (err) {
        throw sealError('the TPM cannot use the cache key (another TPM, or a cleared one)', err)
      }
      // A TPM that answered with anything but this key's signature must not yield a key.
      if (!verify('sha256', msg, k.publicKey, sig))
        throw sealError('the TPM signature does not verify')
      return new Uint8Array(await hkdfAsync('sha256', sig, salt, 'spiffe-edge cache kek v1', 32))
    }
  }

  /** AAD: the KEK's public area, so a wrapped DEK names the exact TPM key it needs. */
  private static aad(k: TpmKey): Uint8Array {
    return createHash('sha256').update('tpm').update(k.tpmPublic).digest()
  }

  async wrap(dek: Uint8Array): Promise<Uint8Array> {
    const k = await this.kekKey(true)
    return wrapWith(dek, TpmSealer.aad(k), this.derive(true))
  }

  async unwrap(wrapped: Uint8Array): Promise<Uint8Array> {
    let k: TpmKey
    try {
      k = await this.kekKey(false)
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_CACHE_SEAL') throw err
      throw sealError('cannot read the TPM cache key', err)
    }
    return unwrapWith(wrapped, TpmSealer.aad(k), this.derive(false))
  }
}
