/**
 * Server-side TPM2_MakeCredential in pure TypeScript (TPM 2.0 Library spec part 1, "Protected
 * Storage" and "Credential Protection"; KDFa/KDFe from the "Key Derivation Functions" clause).
 * The output activates with TPM2_ActivateCredential on the TPM that holds the EK, only when the
 * object named by `objectName` is loaded there: that is how an AK is bound to an EK.
 */
import {
  constants,
  createCipheriv,
  createECDH,
  createHash,
  createHmac,
  publicEncrypt,
  randomBytes,
} from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'
import { HASH_ALGS, TPM_ALG, TPM_ECC_CURVE } from './constants.js'
import { TpmStructureError } from './errors.js'
import { publicKeyObject, TPMA_OBJECT, type TpmPublic } from './structures/public.js'
import { Reader } from './structures/reader.js'

export interface Credential {
  /** Marshaled TPM2B_ID_OBJECT. */
  readonly credentialBlob: Uint8Array
  /** Marshaled TPM2B_ENCRYPTED_SECRET. */
  readonly encryptedSecret: Uint8Array
}

/** tpm2-tools' credential file: magic, u32 version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
export const CREDENTIAL_FILE_MAGIC = 0xbadcc0de
const CREDENTIAL_FILE_VERSION = 1

// OpenSSL curve names for ECDH with the EK's curve.
const ECDH_CURVES: ReadonlyMap<number, { readonly name: string; readonly size: number }> = new Map([
  [TPM_ECC_CURVE.NIST_P256, { name: 'prime256v1', size: 32 }],
  [TPM_ECC_CURVE.NIST_P384, { name: 'secp384r1', size: 48 }],
  [TPM_ECC_CURVE.NIST_P521, { name: 'secp521r1', size: 66 }],
])

function hashOf(alg: number): { readonly name: string; readonly size: number } {
  const h = HASH_ALGS.get(alg)
  if (!h) throw new TpmStructureError(`unsupported hash algorithm 0x${alg.toString(16)}`)
  return h
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n >>> 0)
  return b
}

function tpm2b(bytes: Uint8Array): Uint8Array {
  if (bytes.length > 0xffff) throw new TpmStructureError('TPM2B: value larger than 65535 bytes')
  const out = new Uint8Array(2 + bytes.length)
  out[0] = bytes.length >> 8
  out[1] = bytes.length & 0xff
  out.set(bytes, 2)
  return out
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** A KDF label: ASCII, NUL-terminated once (the spec counts the terminator as part of it). */
function labelBytes(label: string): Uint8Array {
  const ascii = Buffer.from(label, 'latin1')
  return label.endsWith('\0') ? ascii : concat(ascii, Uint8Array.of(0))
}

// The labels MakeCredential uses on every call, encoded once (never handed out to be changed).
const IDENTITY_LABEL = Buffer.from('IDENTITY\0', 'latin1')
const STORAGE_LABEL = labelBytes('STORAGE')
const INTEGRITY_LABEL = labelBytes('INTEGRITY')
const EMPTY = new Uint8Array()
const ZERO_IV = Buffer.alloc(16)
const labelFor = (label: string) =>
  label === 'STORAGE' ? STORAGE_LABEL : label === 'INTEGRITY' ? INTEGRITY_LABEL : labelBytes(label)

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits <= 0 || bits > 0xffff * 8) {
    throw new RangeError(`KDF output size ${bits} bits is out of range`)
  }
}

/** Keeps `bits` bits: whole bytes, then the top bits of the first byte cleared (spec rule). */
function truncate(stream: Uint8Array, bits: number): Uint8Array {
  const out = stream.slice(0, Math.ceil(bits / 8))
  if (bits % 8 !== 0) out[0]! &= (1 << (bits % 8)) - 1
  return out
}

/** KDFa: SP 800-108 counter mode with HMAC, as the TPM derives symmetric and HMAC keys. */
export function kdfa(
  hashAlg: number,
  key: Uint8Array,
  label: string,
  contextU: Uint8Array,
  contextV: Uint8Array,
  bits: number,
): Uint8Array {
  checkBits(bits)
  const h = hashOf(hashAlg)
  const fixed = concat(labelFor(label), contextU, contextV, u32(bits))
  if (bits <= h.size * 8) {
    // One block (every key MakeCredential derives): no block list to join.
    return truncate(createHmac(h.name, key).update(u32(1)).update(fixed).digest(), bits)
  }
  const blocks: Uint8Array[] = []
  for (let i = 1, got = 0; got * 8 < bits; i++, got += h.size) {
    blocks.push(createHmac(h.name, key).update(u32(i)).update(fixed).digest())
  }
  return truncate(concat(...blocks), bits)
}

/** KDFe: the SP 800-56A concatenation KDF over an ECDH shared secret Z. */
export function kdfe(
  hashAlg: number,
  z: Uint8Array,
  label: string,
  partyUInfo: Uint8Array,
  partyVInfo: Uint8Array,
  bits: number,
): Uint8Array {
  checkBits(bits)
  const h = hashOf(hashAlg)
  const fixed = concat(labelBytes(label), partyUInfo, partyVInfo)
  const blocks: Uint8Array[] = []
  for (let i = 1, got = 0; got * 8 < bits; i++, got += h.size) {
    blocks.push(createHash(h.name).update(u32(i)).update(z).update(fixed).digest())
  }
  return truncate(concat(...blocks), bits)
}

function unsupported(message: string): SpiffeEdgeError {
  return new SpiffeEdgeError('ERR_TPM_UNSUPPORTED', message, {
    remedy: 'use an EK made from a TCG EK template (RSA or NIST ECC, AES-CFB symmetric)',
  })
}

function padTo(bytes: Uint8Array, size: number): Uint8Array {
  let i = 0
  while (bytes.length - i > size && bytes[i] === 0) i++
  const v = bytes.subarray(i)
  if (v.length > size) throw new TpmStructureError('ECC coordinate longer than the curve')
  const out = new Uint8Array(size)
  out.set(v, size - v.length)
  return out
}

/** The seed and its EK-encrypted form (part 1, "Secret Sharing" with the "IDENTITY" label). */
function protectSeed(ek: TpmPublic): { seed: Uint8Array; encryptedSecret: Uint8Array } {
  const h = hashOf(ek.nameAlg)
  if (ek.type === 'rsa') {
    const seed = new Uint8Array(randomBytes(h.size))
    const enc = publicEncrypt(
      {
        key: publicKeyObject(ek),
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: h.name,
        oaepLabel: IDENTITY_LABEL,
      },
      seed,
    )
    return { seed, encryptedSecret: tpm2b(new Uint8Array(enc)) }
  }
  const curve = ECDH_CURVES.get(ek.curveId)
  if (!curve) throw unsupported(`EK curve 0x${ek.curveId.toString(16)} is not supported`)
  const ekX = padTo(ek.x, curve.size)
  const ekY = padTo(ek.y, curve.size)
  const ecdh = createECDH(curve.name)
  // Uncompressed SEC1 point: 04 || x || y.
  const ephemeral = new Uint8Array(ecdh.generateKeys())
  let z: Uint8Array
  try {
    z = new Uint8Array(ecdh.computeSecret(concat(Uint8Array.of(4), ekX, ekY)))
  } catch (err) {
    throw new TpmStructureError(`EK public point is not on its curve (${(err as Error).message})`)
  }
  const ephX = ephemeral.subarray(1, 1 + curve.size)
  const ephY = ephemeral.subarray(1 + curve.size)
  const seed = kdfe(ek.nameAlg, z, 'IDENTITY', ephX, ekX, h.size * 8)
  return { seed, encryptedSecret: tpm2b(concat(tpm2b(ephX), tpm2b(ephY))) }
}

/**
 * TPM2_MakeCredential without a TPM: protects `secret` so that only the TPM holding `ekPublic`'s
 * private key, with the object named `objectName` loaded, can recover it (ActivateCredential).
 */
export function makeCredential(
  ekPublic: TpmPublic,
  objectName: Uint8Array,
  secret: Uint8Array,
): Credential {
  const h = hashOf(ekPublic.nameAlg)
  const attrs = ekPublic.objectAttributes
  // The TPM refuses anything but a restricted decryption key as the protector.
  if (!(attrs & TPMA_OBJECT.restricted) || !(attrs & TPMA_OBJECT.decrypt)) {
    throw unsupported('the EK is not a restricted decryption key')
  }
  const sym = ekPublic.symmetric
  if (
    sym.algorithm !== TPM_ALG.AES ||
    sym.mode !== TPM_ALG.CFB ||
    ![128, 192, 256].includes(sym.keyBits ?? 0)
  ) {
    throw unsupported('the EK symmetric algorithm is not AES-CFB')
  }
  if (secret.length === 0 || secret.length > h.size) {
    throw new TpmStructureError(
      `credential secret is ${secret.length} bytes; the EK nameAlg allows 1-${h.size}`,
    )
  }
  if (objectName.length < 2 || objectName.length > 66) {
    throw new TpmStructureError(`object Name is ${objectName.length} bytes, not a TPM2B_NAME`)
  }
  const { seed, encryptedSecret } = protectSeed(ekPublic)
  const keyBits = sym.keyBits!
  const symKey = kdfa(ekPublic.nameAlg, seed, 'STORAGE', objectName, EMPTY, keyBits)
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, ZERO_IV)
  const encIdentity = concat(cipher.update(tpm2b(secret)), cipher.final())
  const hmacKey = kdfa(ekPublic.nameAlg, seed, 'INTEGRITY', EMPTY, EMPTY, h.size * 8)
  const outerHmac = createHmac(h.name, hmacKey).update(encIdentity).update(objectName).digest()
  return {
    credentialBlob: tpm2b(concat(tpm2b(outerHmac), encIdentity)),
    encryptedSecret,
  }
}

/** The parts of a TPM2B_ID_OBJECT: the outer HMAC and the encrypted credential. */
export function parseIdObject(credentialBlob: Uint8Array): {
  integrityHmac: Uint8Array
  encIdentity: Uint8Array
} {
  const outer = new Reader(credentialBlob, 'TPM2B_ID_OBJECT')
  const inner = new Reader(outer.sized('credential'), 'TPMS_ID_OBJECT')
  outer.end()
  const integrityHmac = inner.sized('integrityHMAC', 64)
  // encIdentity is the rest: an encrypted TPM2B_DIGEST (2 + up to 64 bytes).
  const encIdentity = inner.bytesOf(inner.remaining, 'encIdentity')
  if (encIdentity.length < 2 || encIdentity.length > 66) {
    throw new TpmStructureError(`TPMS_ID_OBJECT: encIdentity is ${encIdentity.length} bytes`)
  }
  return { integrityHmac, encIdentity }
}

/** Writes the file `tpm2_makecredential -o` writes and `tpm2_activatecredential -i` reads. */
export function encodeCredentialFile(cred: Credential): Uint8Array {
  return concat(
    u32(CREDENTIAL_FILE_MAGIC),
    u32(CREDENTIAL_FILE_VERSION),
    cred.credentialBlob,
    cred.encryptedSecret,
  )
}

/** Reads a tpm2-tools credential file back into its two marshaled TPM2B structures. */
export function decodeCredentialFile(bytes: Uint8Array): Credential {
  const r = new Reader(bytes, 'credential file')
  const magic = r.u32('magic')
  if (magic !== CREDENTIAL_FILE_MAGIC) {
    throw new TpmStructureError(`credential file: magic 0x${magic.toString(16)}, not 0xbadcc0de`)
  }
  const version = r.u32('version')
  if (version !== CREDENTIAL_FILE_VERSION) {
    throw new TpmStructureError(`credential file: unsupported version ${version}`)
  }
  const blobStart = r.position
  r.sized('credentialBlob')
  const secretStart = r.position
  // TPM2B_ENCRYPTED_SECRET holds at most sizeof(TPMU_ENCRYPTED_SECRET): an RSA-4096 block.
  r.sized('secret', 512)
  r.end()
  const credentialBlob = bytes.subarray(blobStart, secretStart)
  parseIdObject(credentialBlob)
  return { credentialBlob, encryptedSecret: bytes.subarray(secretStart) }
}
