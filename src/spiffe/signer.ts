/**
 * What the SPIFFE core needs from a private key: a Signer, as go-spiffe asks for crypto.Signer.
 * Key managers (software, TPM, PKCS#11) implement it; nothing here knows where a key lives.
 */
import type { KeyObject } from 'node:crypto'

/** The key types every key manager (software, TPM, PKCS#11) must support. */
export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096'

export const KEY_TYPES: readonly KeyType[] = [
  'ec-p256',
  'ec-p384',
  'rsa-2048',
  'rsa-3072',
  'rsa-4096',
]

/**
 * Something that signs with a private key it may never reveal. This is the hardware seam: a
 * TPM or PKCS#11 key implements it without exposing its private key.
 */
export interface Signer {
  readonly keyType: KeyType
  readonly publicKey: KeyObject
  /**
   * Hashes `data` (SHA-256, or SHA-384 for ec-p384) and signs the digest. ECDSA signatures are
   * IEEE P1363 r||s (the JWS and WebCrypto form), RSA signatures PKCS#1 v1.5.
   */
  sign(data: Uint8Array): Promise<Uint8Array>
  /**
   * Optional: sign() for each of `data`, results in order, all or nothing. A hardware signer
   * offers it when one round trip for many signatures costs less than one per signature (a
   * PKCS#11 token: one hop to a signing thread per batch instead of per SVID).
   */
  signMany?(data: readonly Uint8Array[]): Promise<Uint8Array[]>
}

export function isKeyType(s: unknown): s is KeyType {
  return typeof s === 'string' && (KEY_TYPES as readonly string[]).includes(s)
}

/** The hash sign() applies: SHA-384 pairs with P-384, SHA-256 with everything else. */
export function hashOf(keyType: KeyType): 'SHA-256' | 'SHA-384' {
  return keyType === 'ec-p384' ? 'SHA-384' : 'SHA-256'
}

export function jwsAlgorithm(keyType: KeyType): 'ES256' | 'ES384' | 'RS256' {
  switch (keyType) {
    case 'ec-p256':
      return 'ES256'
    case 'ec-p384':
      return 'ES384'
    default:
      return 'RS256'
  }
}

export type WebCryptoSigningAlgorithm =
  | { name: 'ECDSA'; hash: 'SHA-256' | 'SHA-384'; namedCurve: 'P-256' | 'P-384' }
  | { name: 'RSASSA-PKCS1-v1_5'; hash: 'SHA-256' }

/** The WebCrypto algorithm matching sign(): what @peculiar/x509 needs as `signingAlgorithm`. */
export function webCryptoAlgorithm(keyType: KeyType): WebCryptoSigningAlgorithm {
  switch (keyType) {
    case 'ec-p256':
      return { name: 'ECDSA', hash: 'SHA-256', namedCurve: 'P-256' }
    case 'ec-p384':
      return { name: 'ECDSA', hash: 'SHA-384', namedCurve: 'P-384' }
    default:
      return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  }
}
