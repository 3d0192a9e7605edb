/**
 * The one secret key the agent keeps in its token: an HMAC-SHA-256 key (CKK_GENERIC_SECRET, 256
 * bits) made in the token, CKA_SENSITIVE and not CKA_EXTRACTABLE, that may only sign (MAC). The
 * PKCS#11 cache sealer derives its key-encryption key from this key's MAC of a salt: HMAC is
 * deterministic, so the same token key yields the same KEK after any restart, and nothing else
 * can, since the key value never leaves the token.
 */
import pkcs11js from 'pkcs11js'
import { fromPkcs11, Pkcs11KeyError } from './errors.js'
import { findObjects, readAttr } from './objects.js'

export const HMAC_BYTES = 32

export interface SecretKeyRef {
  readonly handle: pkcs11js.Handle
  /** CKA_ID, random per key: a key re-made under the same label is another key. */
  readonly ckaId: Buffer
}

/**
 * The secret key labelled `label`, or undefined. Two objects with one label are refused: which
 * one wraps the cache would be a guess.
 */
export function findSecretKey(
  p: pkcs11js.PKCS11,
  s: pkcs11js.Handle,
  label: string,
): SecretKeyRef | undefined {
  const found = findObjects(
    p,
    s,
    [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_LABEL, value: label },
    ],
    4,
  )
  if (found.length === 0) return undefined
  if (found.length > 1) {
    throw new Pkcs11KeyError(
      'ERR_PKCS11',
      `${found.length} secret keys in the token are labelled ${label}`,
      'delete the extra objects (the agent then seals a new cache with the one left)',
    )
  }
  return { handle: found[0]!, ckaId: readAttr(p, s, found[0]!, pkcs11js.CKA_ID) }
}

/** Makes the HMAC key in the token (synchronous: C_GenerateKey of 32 random bytes is instant). */
export function generateHmacKey(
  p: pkcs11js.PKCS11,
  s: pkcs11js.Handle,
  label: string,
  ckaId: Buffer,
): SecretKeyRef {
  try {
    const handle = p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
      { type: pkcs11js.CKA_VALUE_LEN, value: HMAC_BYTES },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_VERIFY, value: false },
      { type: pkcs11js.CKA_ENCRYPT, value: false },
      { type: pkcs11js.CKA_DECRYPT, value: false },
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: ckaId },
    ])
    return { handle, ckaId }
  } catch (err) {
    throw fromPkcs11('generating the cache HMAC key in the token', err)
  }
}

/** HMAC-SHA-256 of `data` (a few dozen bytes) in the token. */
export function hmacSha256(
  p: pkcs11js.PKCS11,
  s: pkcs11js.Handle,
  key: pkcs11js.Handle,
  data: Uint8Array,
): Uint8Array {
  p.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_HMAC }, key)
  const mac = p.C_Sign(s, Buffer.from(data), Buffer.alloc(HMAC_BYTES))
  if (mac.length !== HMAC_BYTES) {
    throw new Pkcs11KeyError(
      'ERR_PKCS11',
      `the token returned a ${mac.length}-byte HMAC-SHA-256`,
      'check the token firmware; the MAC was not used',
    )
  }
  return new Uint8Array(mac)
}
