import { createHash, createPublicKey, type KeyObject } from 'node:crypto'
import { HASH_ALGS, TPM_ALG, TPM_ECC_CURVE } from '../constants.js'
import { TpmStructureError } from '../errors.js'
import { Reader } from './reader.js'
import { Writer } from './writer.js'

/** TPMA_OBJECT bits (TPM 2.0 part 2, 8.3). */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const

export interface SymDef {
  readonly algorithm: number
  readonly keyBits?: number
  readonly mode?: number
}

export interface Scheme {
  readonly scheme: number
  readonly hashAlg?: number
}

interface PublicBase {
  readonly nameAlg: number
  readonly objectAttributes: number
  readonly authPolicy: Uint8Array
  /** The exact TPMT_PUBLIC bytes this was parsed from: the Name is computed over them. */
  readonly raw: Uint8Array
}

export interface RsaPublic extends PublicBase {
  readonly type: 'rsa'
  readonly symmetric: SymDef
  readonly scheme: Scheme
  readonly keyBits: number
  /** 0 means the default, 65537. */
  readonly exponent: number
  readonly modulus: Uint8Array
}

export interface EccPublic extends PublicBase {
  readonly type: 'ecc'
  readonly symmetric: SymDef
  readonly scheme: Scheme
  readonly curveId: number
  readonly kdf: Scheme
  readonly x: Uint8Array
  readonly y: Uint8Array
}

export type TpmPublic = RsaPublic | EccPublic

const CURVES: ReadonlyMap<number, { readonly jwk: string; readonly size: number }> = new Map([
  [TPM_ECC_CURVE.NIST_P256, { jwk: 'P-256', size: 32 }],
  [TPM_ECC_CURVE.NIST_P384, { jwk: 'P-384', size: 48 }],
  [TPM_ECC_CURVE.NIST_P521, { jwk: 'P-521', size: 66 }],
])

function readSymDef(r: Reader): SymDef {
  const algorithm = r.u16('symmetric.algorithm')
  if (algorithm === TPM_ALG.NULL) return { algorithm }
  return { algorithm, keyBits: r.u16('symmetric.keyBits'), mode: r.u16('symmetric.mode') }
}

function readScheme(r: Reader, field: string): Scheme {
  const scheme = r.u16(`${field}.scheme`)
  if (scheme === TPM_ALG.NULL) return { scheme }
  const hashAlg = r.u16(`${field}.hashAlg`)
  // ECDAA carries a commit count after the hash.
  if (scheme === TPM_ALG.ECDAA) r.u16(`${field}.count`)
  return { scheme, hashAlg }
}

/** Parses a TPMT_PUBLIC from a reader positioned at it (RSA and ECC; others are rejected). */
function readTpmtPublic(r: Reader, start: number, source: Uint8Array): TpmPublic {
  const type = r.u16('type')
  const nameAlg = r.u16('nameAlg')
  if (!HASH_ALGS.has(nameAlg)) {
    throw new TpmStructureError(`TPMT_PUBLIC: unsupported nameAlg 0x${nameAlg.toString(16)}`)
  }
  const objectAttributes = r.u32('objectAttributes')
  const authPolicy = r.sized('authPolicy', 64)
  if (type === TPM_ALG.RSA) {
    const symmetric = readSymDef(r)
    const scheme = readScheme(r, 'scheme')
    const keyBits = r.u16('keyBits')
    const exponent = r.u32('exponent')
    const modulus = r.sized('unique.rsa', 512)
    if (keyBits === 0 || keyBits > 4096 || keyBits % 8 !== 0) {
      throw new TpmStructureError(`TPMT_PUBLIC: unsupported RSA key size ${keyBits}`)
    }
    if (modulus.length !== 0 && modulus.length !== keyBits / 8) {
      throw new TpmStructureError(
        `TPMT_PUBLIC: RSA modulus is ${modulus.length} bytes, keyBits says ${keyBits / 8}`,
      )
    }
    const raw = source.subarray(start, r.position)
    return {
      type: 'rsa',
      nameAlg,
      objectAttributes,
      authPolicy,
      symmetric,
      scheme,
      keyBits,
      exponent,
      modulus,
      raw,
    }
  }
  if (type === TPM_ALG.ECC) {
    const symmetric = readSymDef(r)
    const scheme = readScheme(r, 'scheme')
    const curveId = r.u16('curveID')
    const kdf = readScheme(r, 'kdf')
    const x = r.sized('unique.ecc.x', 128)
    const y = r.sized('unique.ecc.y', 128)
    const raw = source.subarray(start, r.position)
    return {
      type: 'ecc',
      nameAlg,
      objectAttributes,
      authPolicy,
      symmetric,
      scheme,
      curveId,
      kdf,
      x,
      y,
      raw,
    }
  }
  throw new TpmStructureError(`TPMT_PUBLIC: unsupported key type 0x${type.toString(16)}`)
}

/** Parses a marshaled TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC); the size must be exact. */
export function parseTpm2bPublic(bytes: Uint8Array): TpmPublic {
  const outer = new Reader(bytes, 'TPM2B_PUBLIC')
  const inner = outer.sized('publicArea')
  outer.end()
  return parseTpmtPublic(inner)
}

/** Parses a bare TPMT_PUBLIC; trailing bytes are an error. */
export function parseTpmtPublic(bytes: Uint8Array): TpmPublic {
  const r = new Reader(bytes, 'TPMT_PUBLIC')
  const pub = readTpmtPublic(r, 0, bytes)
  r.end()
  return pub
}

/** The object's Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC). */
export function objectName(pub: TpmPublic): Uint8Array {
  const hash = HASH_ALGS.get(pub.nameAlg)!
  const digest = createHash(hash.name).update(pub.raw).digest()
  const out = new Uint8Array(2 + digest.length)
  out[0] = pub.nameAlg >> 8
  out[1] = pub.nameAlg & 0xff
  out.set(digest, 2)
  return out
}

function b64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url')
}

/** Left-pads a big-endian integer to `size` bytes (ECC coordinates may drop leading zeros). */
function pad(bytes: Uint8Array, size: number, field: string): Uint8Array {
  if (bytes.length > size)
    throw new TpmStructureError(`TPMT_PUBLIC: ${field} longer than the curve`)
  if (bytes.length === size) return bytes
  const out = new Uint8Array(size)
  out.set(bytes, size - bytes.length)
  return out
}

// Building a KeyObject from a JWK costs more than the signature check a verifier does with it
// (an RSA EK several times more), and a server sees the same EK, AK and agent key every time a
// TPM re-attests: remember one per key, by exactly the fields buildKeyObject reads (type, curve
// and point, or modulus and exponent; a KeyObject is immutable and fully determined by them). Bounded (least recently used dropped); failures are not cached.
const keyObjects = new WeakMap<TpmPublic, KeyObject>()
const byContent = new Map<string, KeyObject>()
/** Bytes a cached key is charged: its public area (as a base64 key) plus the key object itself. */
const KEY_OBJECT_OVERHEAD = 2048
export const PUBLIC_KEY_CACHE_MAX_BYTES = 4 * 2 ** 20
let byContentBytes = 0
const charge = (k: string) => k.length + KEY_OBJECT_OVERHEAD

/** The public key as a Node KeyObject (RSA or EC); rejects points that are not on the curve. */
export function publicKeyObject(pub: TpmPublic): KeyObject {
  let key = keyObjects.get(pub)
  if (key) return key
  const content = keyContent(pub)
  key = byContent.get(content)
  if (key) {
    byContent.delete(content) // most recently used last
  } else {
    key = buildKeyObject(pub)
    byContentBytes += charge(content)
    while (byContentBytes > PUBLIC_KEY_CACHE_MAX_BYTES && byContent.size > 0) {
      const oldest = byContent.keys().next().value!
      byContent.delete(oldest)
      byContentBytes -= charge(oldest)
    }
  }
  byContent.set(content, key)
  keyObjects.set(pub, key)
  return key
}

/** The fields a key object is built from, as one string (not `raw`: hand-built areas lack it). */
function keyContent(pub: TpmPublic): string {
  const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('base64')
  return pub.type === 'rsa'
    ? `rsa:${pub.exponent}:${b64(pub.modulus)}`
    : `ecc:${pub.curveId}:${b64(pub.x)}:${b64(pub.y)}`
}

/** Cached key objects (tests). */
export function publicKeyCacheStats(): { entries: number; bytes: number } {
  return { entries: byContent.size, bytes: byContentBytes }
}

function buildKeyObject(pub: TpmPublic): KeyObject {
  try {
    if (pub.type === 'rsa') {
      if (pub.modulus.length === 0) throw new TpmStructureError('TPMT_PUBLIC: empty RSA modulus')
      const e = pub.exponent === 0 ? 65537 : pub.exponent
      const eBytes = Buffer.alloc(4)
      eBytes.writeUInt32BE(e)
      let i = 0
      while (i < 3 && eBytes[i] === 0) i++
      return createPublicKey({
        key: { kty: 'RSA', n: b64url(pub.modulus), e: b64url(eBytes.subarray(i)) },
        format: 'jwk',
      })
    }
    const curve = CURVES.get(pub.curveId)
    if (!curve) {
      throw new TpmStructureError(
        `TPMT_PUBLIC: unsupported ECC curve 0x${pub.curveId.toString(16)}`,
      )
    }
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: curve.jwk,
        x: b64url(pad(pub.x, curve.size, 'x')),
        y: b64url(pad(pub.y, curve.size, 'y')),
      },
      format: 'jwk',
    })
  } catch (err) {
    if (err instanceof TpmStructureError) throw err
    throw new TpmStructureError(`TPMT_PUBLIC: not a valid public key (${(err as Error).message})`)
  }
}

/** DER SubjectPublicKeyInfo, the form `tpm2_readpublic -f der` writes. */
export function publicKeySpki(pub: TpmPublic): Uint8Array {
  const key = publicKeyObject(pub)
  let spki = spkis.get(key)
  if (!spki) {
    spki = new Uint8Array(key.export({ type: 'spki', format: 'der' }))
    spkis.set(key, spki)
  }
  // A copy: callers may keep or change what they get.
  return spki.slice()
}

const spkis = new WeakMap<KeyObject, Uint8Array>()

/** A short algorithm label: rsa-2048, ecc-p256, ecc-p384. */
export function keyAlgorithmLabel(pub: TpmPublic): string {
  if (pub.type === 'rsa') return `rsa-${pub.keyBits}`
  const curve = CURVES.get(pub.curveId)
  return curve
    ? `ecc-${curve.jwk.toLowerCase().replace('-', '')}`
    : `ecc-0x${pub.curveId.toString(16)}`
}

/** A public area to send to the TPM (templates): the parsed shape without the raw bytes. */
export type PublicTemplate = Omit<RsaPublic, 'raw'> | Omit<EccPublic, 'raw'>

function writeScheme(w: Writer, s: Scheme): void {
  w.u16(s.scheme)
  if (s.scheme === TPM_ALG.NULL) return
  w.u16(s.hashAlg ?? TPM_ALG.SHA256)
  if (s.scheme === TPM_ALG.ECDAA) w.u16(0)
}

/** Marshals a TPMT_PUBLIC. */
export function marshalTpmtPublic(p: PublicTemplate): Uint8Array {
  const w = new Writer()
  w.u16(p.type === 'rsa' ? TPM_ALG.RSA : TPM_ALG.ECC)
    .u16(p.nameAlg)
    .u32(p.objectAttributes)
    .sized(p.authPolicy)
  w.u16(p.symmetric.algorithm)
  if (p.symmetric.algorithm !== TPM_ALG.NULL) {
    w.u16(p.symmetric.keyBits ?? 128).u16(p.symmetric.mode ?? TPM_ALG.CFB)
  }
  writeScheme(w, p.scheme)
  if (p.type === 'rsa') {
    w.u16(p.keyBits).u32(p.exponent).sized(p.modulus)
  } else {
    w.u16(p.curveId)
    writeScheme(w, p.kdf)
    w.sized(p.x).sized(p.y)
  }
  return w.finish()
}

/** Marshals a TPM2B_PUBLIC (what the addon's createPrimary/create take). */
export function marshalTpm2bPublic(p: PublicTemplate): Uint8Array {
  return new Writer().sized(marshalTpmtPublic(p)).finish()
}

/**
 * The inverse direction: a TPM public area for a key we only have as a KeyObject (e.g. from an EK
 * certificate), shaped by a template (nameAlg, attributes, policy, symmetric, scheme). With the TCG
 * EK template this gives the EK's exact public area, so its Name and MakeCredential work from the
 * certificate alone.
 */
export function publicFromKeyObject(key: KeyObject, template: PublicTemplate): TpmPublic {
  const jwk = key.export({ format: 'jwk' })
  const bytes = (s: string | undefined, field: string) => {
    if (!s) throw new TpmStructureError(`key has no ${field}`)
    return new Uint8Array(Buffer.from(s, 'base64url'))
  }
  let filled: PublicTemplate
  if (template.type === 'rsa') {
    if (jwk.kty !== 'RSA') throw new TpmStructureError('template is RSA but the key is not')
    const modulus = bytes(jwk.n, 'modulus')
    const e = bytes(jwk.e, 'exponent').reduce((acc, b) => acc * 256 + b, 0)
    filled = {
      ...template,
      keyBits: modulus.length * 8,
      exponent: e === 65537 ? 0 : e,
      modulus,
    }
  } else {
    const curve = CURVES.get(template.curveId)
    if (jwk.kty !== 'EC' || !curve || jwk.crv !== curve.jwk) {
      throw new TpmStructureError(
        `template wants curve ${curve?.jwk ?? template.curveId}, key is ${jwk.crv ?? jwk.kty}`,
      )
    }
    filled = { ...template, x: bytes(jwk.x, 'x'), y: bytes(jwk.y, 'y') }
  }
  return parseTpmtPublic(marshalTpmtPublic(filled))
}
