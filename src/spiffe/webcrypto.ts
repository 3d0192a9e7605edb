import type { webcrypto } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'
import { hashOf, type Signer, webCryptoAlgorithm } from './signer.js'

/**
 * A WebCrypto-shaped object whose subtle.sign() routes to a Signer, so @peculiar/x509 can sign
 * certificates and CSRs with keys that never leave hardware. Everything else (digest, verify,
 * importKey, getRandomValues, …) is the platform's WebCrypto.
 */

type Crypto = webcrypto.Crypto
type CryptoKey = webcrypto.CryptoKey

/** Placeholder private keys stand for their Signer; a WeakMap keeps the link out of sight. */
const signers = new WeakMap<object, Signer>()

/**
 * The private "CryptoKey" to hand to x509 generators (`signingKey`, `keys.privateKey`). It
 * carries `algorithm` because x509 reads namedCurve from it to size ECDSA signatures.
 */
export function signerCryptoKey(signer: Signer): CryptoKey {
  const alg = webCryptoAlgorithm(signer.keyType)
  const algorithm =
    alg.name === 'ECDSA'
      ? { name: alg.name, namedCurve: alg.namedCurve, hash: { name: alg.hash } }
      : { name: alg.name, hash: { name: alg.hash } }
  const key = Object.freeze({
    type: 'private' as const,
    extractable: false,
    algorithm,
    usages: ['sign' as const],
  })
  signers.set(key, signer)
  return key as unknown as CryptoKey
}

function hashName(alg: unknown): string | undefined {
  if (typeof alg !== 'object' || alg === null || !('hash' in alg)) return undefined
  const h = (alg as { hash: unknown }).hash
  if (typeof h === 'string') return h.toUpperCase()
  if (typeof h === 'object' && h !== null && 'name' in h) {
    return String((h as { name: unknown }).name).toUpperCase()
  }
  return undefined
}

function algName(alg: unknown): string {
  if (typeof alg === 'string') return alg.toUpperCase()
  if (typeof alg === 'object' && alg !== null && 'name' in alg) {
    return String((alg as { name: unknown }).name).toUpperCase()
  }
  return ''
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  throw new TypeError('sign: data must be a BufferSource')
}

/** Binds a method to its receiver: Node's WebCrypto methods throw when called unbound. */
function bound<T extends object>(target: T, prop: string | symbol): unknown {
  const v = Reflect.get(target, prop, target)
  return typeof v === 'function' ? v.bind(target) : v
}

/**
 * Returns a Crypto for x509's `crypto` argument. Pass `signerCryptoKey(signer)` as the signing
 * key; sign() with any other key falls through to the platform.
 */
export function signerCrypto(signer: Signer): Crypto {
  const base = globalThis.crypto as unknown as Crypto
  const expected = webCryptoAlgorithm(signer.keyType)
  const sign = async (algorithm: unknown, key: CryptoKey, data: unknown): Promise<ArrayBuffer> => {
    const owner = signers.get(key)
    if (owner === undefined) {
      return base.subtle.sign(
        algorithm as Parameters<typeof base.subtle.sign>[0],
        key,
        data as Uint8Array,
      )
    }
    // The signer hashes with a fixed algorithm; refuse rather than emit a mislabelled signature.
    const name = algName(algorithm)
    const hash = hashName(algorithm)
    if (
      name !== expected.name.toUpperCase() ||
      (hash !== undefined && hash !== hashOf(owner.keyType))
    ) {
      throw new SpiffeEdgeError(
        'ERR_KEY_MANAGER',
        `a ${owner.keyType} signer cannot sign with ${name}/${hash ?? 'default hash'}`,
        { remedy: `sign with ${expected.name} and ${expected.hash} (webCryptoAlgorithm(keyType))` },
      )
    }
    const sig = await owner.sign(toBytes(data))
    return sig.buffer.slice(sig.byteOffset, sig.byteOffset + sig.byteLength) as ArrayBuffer
  }
  const subtle = new Proxy(base.subtle, {
    get: (target, prop) => (prop === 'sign' ? sign : bound(target, prop)),
  })
  return new Proxy(base, {
    get: (target, prop) => (prop === 'subtle' ? subtle : bound(target, prop)),
  })
}
