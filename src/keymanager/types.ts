import { createPublicKey, sign as cryptoSign, type KeyObject } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'
import { KEY_TYPES, type KeyType, type Signer } from '../spiffe/signer.js'

// The Signer contract lives in the SPIFFE core; key managers implement it.
export {
  hashOf,
  isKeyType,
  jwsAlgorithm,
  KEY_TYPES,
  type KeyType,
  type Signer,
  type WebCryptoSigningAlgorithm,
  webCryptoAlgorithm,
} from '../spiffe/signer.js'

export interface Key extends Signer {
  readonly id: string
}

export interface KeyManager {
  /** Generates a key under `id`, replacing any key already there. */
  generateKey(id: string, type: KeyType): Promise<Key>
  /**
   * As generateKey, but returns as soon as the key can sign, with `stored` settling once it is
   * kept durably (key file written and fsynced): the caller overlaps that write with work that
   * needs the key (the agent's attestation) and awaits `stored` before it relies on the key
   * across a restart. Key managers without a write worth overlapping leave it out.
   */
  generateKeyEarly?(id: string, type: KeyType): Promise<{ key: Key; stored: Promise<void> }>
  getKey(id: string): Promise<Key | undefined>
  listKeys(): Promise<Key[]>
  /** Deletes the key; deleting a missing key is not an error. */
  deleteKey(id: string): Promise<void>
}

/** A key manager failure: bad id, unreadable or corrupt key store. */
export class KeyManagerError extends SpiffeEdgeError {
  constructor(message: string, remedy: string, cause?: unknown) {
    super('ERR_KEY_MANAGER', message, { remedy, cause })
  }
}

/** Node's generateKeyPair options for a key type. */
export function generateOptions(
  keyType: KeyType,
): { type: 'ec'; namedCurve: string } | { type: 'rsa'; modulusLength: number } {
  switch (keyType) {
    case 'ec-p256':
      return { type: 'ec', namedCurve: 'prime256v1' }
    case 'ec-p384':
      return { type: 'ec', namedCurve: 'secp384r1' }
    case 'rsa-2048':
      return { type: 'rsa', modulusLength: 2048 }
    case 'rsa-3072':
      return { type: 'rsa', modulusLength: 3072 }
    case 'rsa-4096':
      return { type: 'rsa', modulusLength: 4096 }
  }
}

/** The key type of a (public or private) key, or undefined when it is not one we support. */
export function keyTypeOf(key: KeyObject): KeyType | undefined {
  const d = key.asymmetricKeyDetails
  if (key.asymmetricKeyType === 'ec') {
    if (d?.namedCurve === 'prime256v1') return 'ec-p256'
    if (d?.namedCurve === 'secp384r1') return 'ec-p384'
  } else if (key.asymmetricKeyType === 'rsa') {
    // Only the common exponent: hardware keys use it, and odd exponents are a red flag.
    if (d?.publicExponent !== undefined && d.publicExponent !== 65537n) return undefined
    if (d?.modulusLength === 2048) return 'rsa-2048'
    if (d?.modulusLength === 3072) return 'rsa-3072'
    if (d?.modulusLength === 4096) return 'rsa-4096'
  }
  return undefined
}

/** Signs with an in-process private key the way Signer.sign() is specified to. */
export function signWithPrivateKey(
  privateKey: KeyObject,
  keyType: KeyType,
  data: Uint8Array,
): Promise<Uint8Array> {
  const hash = keyType === 'ec-p384' ? 'sha384' : 'sha256'
  if (keyType.startsWith('ec')) {
    // An ECDSA signature takes ~30 µs: less than a hop through the libuv pool costs.
    try {
      const sig = cryptoSign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' })
      return Promise.resolve(new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength))
    } catch (err) {
      return Promise.reject(err)
    }
  }
  return new Promise((resolve, reject) => {
    // The callback form runs on the libuv pool, so RSA-4096 signing does not block the loop.
    cryptoSign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' }, (err, sig) => {
      if (err) reject(err)
      else resolve(new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength))
    })
  })
}

/** A Signer over an in-process private key (tests, software CAs, short-lived keys). */
export function softwareSigner(privateKey: KeyObject, publicKey?: KeyObject): Signer {
  if (privateKey.type !== 'private') {
    throw new KeyManagerError(
      'softwareSigner needs a private key',
      'pass the private KeyObject, not its public half',
    )
  }
  const keyType = keyTypeOf(privateKey)
  if (keyType === undefined) {
    throw new KeyManagerError(
      `unsupported key (${privateKey.asymmetricKeyType})`,
      `use one of ${KEY_TYPES.join(', ')}`,
    )
  }
  return {
    keyType,
    // createPublicKey on a private KeyObject returns its public half.
    publicKey: publicKey ?? createPublicKey(privateKey),
    sign: (data) => signWithPrivateKey(privateKey, keyType, data),
  }
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/

/** Key ids end up in file names and HSM labels: keep them to a safe, bounded alphabet. */
export function validateKeyId(id: string): void {
  if (typeof id !== 'string' || !KEY_ID.test(id)) {
    throw new KeyManagerError(
      `invalid key id ${JSON.stringify(String(id).slice(0, 80))}`,
      'use 1-64 characters of A-Z, a-z, 0-9, dot, dash and underscore',
    )
  }
}
