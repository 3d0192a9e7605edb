/**
 * End-to-end encryption of the few node API secrets a broker must never see: join tokens and
 * attestation evidence (to the server's encryption key), JWT-SVIDs and broker credentials (to an
 * ephemeral key the agent put in its request). JWE compact with ECDH-ES+A256KW / A256GCM through
 * jose; only P-256 public keys are accepted as recipients, and every input is size-capped before
 * it is parsed.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { CompactEncrypt, calculateJwkThumbprint, compactDecrypt, exportJWK, importJWK } from 'jose'
import { SpiffeEdgeError } from '../../errors.js'

const ALG = 'ECDH-ES+A256KW'
const ENC = 'A256GCM'
/** A P-256 public JWK is ~200 bytes; anything much larger is not one. */
const MAX_JWK = 1024
/** Larger than any attestation params (128 KiB) in base64url plus the header. */
export const MAX_JWE = 192 << 10

function encryptionError(message: string, cause?: unknown): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_MQTT_ENCRYPTION', message, {
    cause,
    remedy:
      'the peer sent a malformed or foreign key or ciphertext; check the agent and server versions',
  })
}

export interface EcdhKeyPair {
  readonly privateKey: KeyObject
  /** The public half as JWK JSON (kty EC, crv P-256, x, y, kid = RFC 7638 thumbprint). */
  readonly publicJwk: string
  readonly kid: string
}

/** A fresh P-256 key pair for one response (or the server's long-lived encryption key). */
export async function newEcdhKey(privateKey?: KeyObject): Promise<EcdhKeyPair> {
  const priv = privateKey ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey
  const pub = await exportJWK(priv)
  if (pub.kty !== 'EC' || pub.crv !== 'P-256' || !pub.x || !pub.y)
    throw encryptionError('the key is not EC P-256')
  const jwk = { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y }
  const kid = await calculateJwkThumbprint(jwk)
  return { privateKey: priv, publicJwk: JSON.stringify({ ...jwk, kid }), kid }
}

/** Parses a recipient key: a P-256 public JWK, nothing else (no private part, no other curves). */
function parseRecipient(jwkJson: string): { x: string; y: string; kid: string | undefined } {
  if (jwkJson.length === 0 || jwkJson.length > MAX_JWK)
    throw encryptionError('bad recipient key size')
  let j: Record<string, unknown>
  try {
    j = JSON.parse(jwkJson) as Record<string, unknown>
  } catch (err) {
    throw encryptionError('the recipient key is not JSON', err)
  }
  if (
    j === null ||
    typeof j !== 'object' ||
    j.kty !== 'EC' ||
    j.crv !== 'P-256' ||
    typeof j.x !== 'string' ||
    typeof j.y !== 'string' ||
    'd' in j
  ) {
    throw encryptionError('the recipient key must be a public EC P-256 JWK')
  }
  return { x: j.x, y: j.y, kid: typeof j.kid === 'string' ? j.kid : undefined }
}

/**
 * Encrypts `plaintext` to the public JWK `jwkJson` (as its holder put it in a signed message).
 * `bind` goes into the protected header, which the AEAD tag covers: a relay that changes it
 * (the nonce or reply key a JWE is bound to) makes the JWE fail to decrypt.
 */
export async function encryptTo(
  jwkJson: string,
  plaintext: Uint8Array,
  bind: Record<string, string> = {},
): Promise<string> {
  const r = parseRecipient(jwkJson)
  let key: Awaited<ReturnType<typeof importJWK>>
  try {
    // importJWK checks that the point is on the curve.
    key = await importJWK({ kty: 'EC', crv: 'P-256', x: r.x, y: r.y }, ALG)
  } catch (err) {
    throw encryptionError('the recipient key is not a valid P-256 point', err)
  }
  return new CompactEncrypt(plaintext)
    .setProtectedHeader({ ...bind, alg: ALG, enc: ENC, ...(r.kid ? { kid: r.kid } : {}) })
    .encrypt(key)
}

/** Decrypts a JWE made by encryptTo for `key`; refuses other algorithms and oversized input. */
export async function decryptWith(
  key: KeyObject,
  jwe: string,
  maxBytes = MAX_JWE,
): Promise<Uint8Array> {
  return (await decryptBound(key, jwe, maxBytes)).plaintext
}

/** decryptWith, also returning the protected header's bound string values. */
export async function decryptBound(
  key: KeyObject,
  jwe: string,
  maxBytes = MAX_JWE,
): Promise<{ plaintext: Uint8Array; bound: Record<string, string> }> {
  if (jwe.length === 0 || jwe.length > maxBytes) throw encryptionError('bad ciphertext size')
  try {
    const r = await compactDecrypt(jwe, key, {
      keyManagementAlgorithms: [ALG],
      contentEncryptionAlgorithms: [ENC],
    })
    const bound: Record<string, string> = {}
    for (const [k, v] of Object.entries(r.protectedHeader)) if (typeof v === 'string') bound[k] = v
    return { plaintext: r.plaintext, bound }
  } catch (err) {
    throw encryptionError(`cannot decrypt: ${(err as Error).message}`, err)
  }
}
