/**
 * End-to-end encryption of the few node API secrets a broker must never see: join tokens and
 * attestation evidence (to the server's encryption key), JWT-SVIDs and broker credentials (to an
 * ephemeral key the agent put in its request). JWE compact (RFC 7516) with ECDH-ES+A256KW /
 * A256GCM (RFC 7518 4.6, 4.4, 5.3) on node:crypto, synchronous: jose 6 runs each step through
 * WebCrypto's async jobs, 1.5-1.8 ms of CPU per JWE against ~0.4 ms here, on the critical path of
 * every MQTT attestation (the unit test checks both ways against jose). Only P-256 public keys are
 * accepted as recipients, an ephemeral key must be a point on the curve (createPublicKey checks),
 * and every input is size-capped before it is parsed.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto'
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

/** RFC 7638 thumbprint of a P-256 public JWK (members in lexicographic order). */
function thumbprint(x: string, y: string): string {
  return createHash('sha256')
    .update(JSON.stringify({ crv: 'P-256', kty: 'EC', x, y }))
    .digest('base64url')
}

function isP256(key: KeyObject, type: 'private' | 'public'): boolean {
  return (
    key.type === type &&
    key.asymmetricKeyType === 'ec' &&
    key.asymmetricKeyDetails?.namedCurve === 'prime256v1'
  )
}

/** A fresh P-256 key pair for one response (or the server's long-lived encryption key). */
export async function newEcdhKey(privateKey?: KeyObject): Promise<EcdhKeyPair> {
  const priv = privateKey ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey
  if (!isP256(priv, 'private')) throw encryptionError('the key is not EC P-256')
  const pub = createPublicKey(priv).export({ format: 'jwk' })
  if (!pub.x || !pub.y) throw encryptionError('the key is not EC P-256')
  const kid = thumbprint(pub.x, pub.y)
  const jwk = { kty: 'EC', crv: 'P-256', x: pub.x, y: pub.y, kid }
  return { privateKey: priv, publicJwk: JSON.stringify(jwk), kid }
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

/** A P-256 public key from its JWK coordinates; throws unless the point is on the curve. */
function importPoint(x: string, y: string): KeyObject {
  if (!B64URL.test(x) || !B64URL.test(y) || x.length !== 43 || y.length !== 43)
    throw new Error('coordinates are not 32 base64url bytes')
  const k = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x, y }, format: 'jwk' })
  if (!isP256(k, 'public')) throw new Error('not a P-256 key')
  return k
}

/**
 * Recipient keys already imported, by JWK JSON: an agent encrypts to the same server key on every
 * attempt, a server to each agent's reply key once. Bounded; only public keys.
 */
const recipients = new Map<string, KeyObject>()
const MAX_RECIPIENTS = 64

function recipientKey(jwkJson: string, r: { x: string; y: string }): KeyObject {
  const hit = recipients.get(jwkJson)
  if (hit) return hit
  const k = importPoint(r.x, r.y)
  if (recipients.size >= MAX_RECIPIENTS) recipients.delete(recipients.keys().next().value!)
  recipients.set(jwkJson, k)
  return k
}

const B64URL = /^[A-Za-z0-9_-]*$/
const b64u = (b: Uint8Array) => Buffer.from(b).toString('base64url')
const unb64u = (s: string) => {
  if (!B64URL.test(s)) throw new Error('not base64url')
  return Buffer.from(s, 'base64url')
}

/** The key-wrapping key: Concat KDF (SHA-256) over Z, alg, empty apu/apv, 256 bits (RFC 7518 4.6.2). */
function kek(z: Buffer): Buffer {
  const u32 = (n: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(n)
    return b
  }
  const alg = Buffer.from(ALG, 'ascii')
  return createHash('sha256')
    .update(Buffer.concat([u32(1), z, u32(alg.length), alg, u32(0), u32(0), u32(256)]))
    .digest()
}

/** RFC 3394 default IV, as A256KW uses it. */
const KW_IV = Buffer.from('a6a6a6a6a6a6a6a6', 'hex')

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
  let recipient: KeyObject
  try {
    recipient = recipientKey(jwkJson, r)
  } catch (err) {
    throw encryptionError('the recipient key is not a valid P-256 point', err)
  }
  const epk = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const e = epk.publicKey.export({ format: 'jwk' })
  const z = diffieHellman({ privateKey: epk.privateKey, publicKey: recipient })
  const cek = randomBytes(32)
  const w = createCipheriv('id-aes256-wrap', kek(z), KW_IV)
  const wrapped = Buffer.concat([w.update(cek), w.final()])
  const header = {
    ...bind,
    alg: ALG,
    enc: ENC,
    ...(r.kid ? { kid: r.kid } : {}),
    epk: { kty: 'EC', crv: 'P-256', x: e.x, y: e.y },
  }
  const h = b64u(Buffer.from(JSON.stringify(header), 'utf8'))
  const iv = randomBytes(12)
  const c = createCipheriv('aes-256-gcm', cek, iv, { authTagLength: 16 })
  c.setAAD(Buffer.from(h, 'ascii'))
  const ct = Buffer.concat([c.update(plaintext), c.final()])
  return `${h}.${b64u(wrapped)}.${b64u(iv)}.${b64u(ct)}.${b64u(c.getAuthTag())}`
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
    if (!isP256(key, 'private')) throw new Error('the key is not an EC P-256 private key')
    const parts = jwe.split('.')
    if (parts.length !== 5) throw new Error('not a compact JWE')
    const [h, wrappedB, ivB, ctB, tagB] = parts as [string, string, string, string, string]
    const header = JSON.parse(unb64u(h).toString('utf8')) as unknown
    if (header === null || typeof header !== 'object' || Array.isArray(header))
      throw new Error('the protected header is not an object')
    const hd = header as Record<string, unknown>
    if (hd.alg !== ALG) throw new Error(`"alg" must be ${ALG}`)
    if (hd.enc !== ENC) throw new Error(`"enc" must be ${ENC}`)
    // Nothing we would have to understand to decrypt correctly: no compression, no extensions,
    // no KDF party info (encryptTo never sets them).
    for (const k of ['zip', 'crit', 'apu', 'apv', 'jku', 'jwk', 'x5u', 'x5c'])
      if (k in hd) throw new Error(`"${k}" is not accepted`)
    const epk = hd.epk as Record<string, unknown> | undefined
    if (
      !epk ||
      typeof epk !== 'object' ||
      epk.kty !== 'EC' ||
      epk.crv !== 'P-256' ||
      typeof epk.x !== 'string' ||
      typeof epk.y !== 'string' ||
      'd' in epk
    )
      throw new Error('"epk" must be a public EC P-256 JWK')
    const z = diffieHellman({ privateKey: key, publicKey: importPoint(epk.x, epk.y) })
    const wrapped = unb64u(wrappedB)
    if (wrapped.length !== 40) throw new Error('the encrypted key is not a wrapped 256-bit key')
    const u = createDecipheriv('id-aes256-wrap', kek(z), KW_IV)
    // The unwrap's integrity check fails for any other key or altered wrapped key.
    const cek = Buffer.concat([u.update(wrapped), u.final()])
    const iv = unb64u(ivB)
    const tag = unb64u(tagB)
    if (iv.length !== 12 || tag.length !== 16) throw new Error('bad IV or tag size')
    const d = createDecipheriv('aes-256-gcm', cek, iv, { authTagLength: 16 })
    d.setAAD(Buffer.from(h, 'ascii'))
    d.setAuthTag(tag)
    const plaintext = new Uint8Array(Buffer.concat([d.update(unb64u(ctB)), d.final()]))
    const bound: Record<string, string> = {}
    for (const [k, v] of Object.entries(hd)) if (typeof v === 'string') bound[k] = v
    return { plaintext, bound }
  } catch (err) {
    throw encryptionError(`cannot decrypt: ${(err as Error).message}`, err)
  }
}
