import { HASH_ALGS, TPM_ALG } from '../constants.js'
import { TpmStructureError } from '../errors.js'
import { Reader } from './reader.js'

export interface RsaSignature {
  readonly sigAlg: typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS
  readonly hashAlg: number
  readonly sig: Uint8Array
}

export interface EcdsaSignature {
  readonly sigAlg: typeof TPM_ALG.ECDSA
  readonly hashAlg: number
  readonly r: Uint8Array
  readonly s: Uint8Array
}

/** A TPMT_SIGNATURE of a scheme we can verify; others are rejected at parse time. */
export type TpmSignature = RsaSignature | EcdsaSignature

// TPM2B_PUBLIC_KEY_RSA holds at most 4096-bit values; ECC parameters at most 66 bytes (P-521),
// with slack for TPMs that keep a leading zero.
const MAX_RSA_SIG = 512
const MAX_ECC_PARAM = 128

/** Parses a marshaled TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA); trailing bytes are an error. */
export function parseSignature(bytes: Uint8Array): TpmSignature {
  const r = new Reader(bytes, 'TPMT_SIGNATURE')
  const sigAlg = r.u16('sigAlg')
  let out: TpmSignature
  if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) {
    const hashAlg = readHash(r)
    out = { sigAlg, hashAlg, sig: r.sized('signature.rsa.sig', MAX_RSA_SIG) }
  } else if (sigAlg === TPM_ALG.ECDSA) {
    const hashAlg = readHash(r)
    const sr = r.sized('signature.ecdsa.r', MAX_ECC_PARAM)
    const ss = r.sized('signature.ecdsa.s', MAX_ECC_PARAM)
    out = { sigAlg, hashAlg, r: sr, s: ss }
  } else {
    throw new TpmStructureError(`TPMT_SIGNATURE: unsupported sigAlg 0x${sigAlg.toString(16)}`)
  }
  r.end()
  return out
}

function readHash(r: Reader): number {
  const hashAlg = r.u16('signature.hash')
  if (!HASH_ALGS.has(hashAlg)) {
    throw new TpmStructureError(`TPMT_SIGNATURE: unsupported hash 0x${hashAlg.toString(16)}`)
  }
  return hashAlg
}

function u16(n: number): number[] {
  return [(n >> 8) & 0xff, n & 0xff]
}

function tpm2b(bytes: Uint8Array): number[] {
  if (bytes.length > 0xffff) throw new TpmStructureError('TPM2B: value too large')
  return [...u16(bytes.length), ...bytes]
}

/** Marshals a TPMT_SIGNATURE (the inverse of parseSignature). */
export function marshalSignature(sig: TpmSignature): Uint8Array {
  const head = [...u16(sig.sigAlg), ...u16(sig.hashAlg)]
  if (sig.sigAlg === TPM_ALG.ECDSA)
    return Uint8Array.from([...head, ...tpm2b(sig.r), ...tpm2b(sig.s)])
  return Uint8Array.from([...head, ...tpm2b(sig.sig)])
}

/** A big-endian unsigned integer without leading zeros, left-padded to `size` bytes. */
function fixedWidth(n: Uint8Array, size: number): Uint8Array {
  let i = 0
  while (i < n.length && n[i] === 0) i++
  const v = n.subarray(i)
  if (v.length > size) {
    throw new TpmStructureError(`TPMT_SIGNATURE: ECDSA value longer than the ${size}-byte curve`)
  }
  const out = new Uint8Array(size)
  out.set(v, size - v.length)
  return out
}

/** r || s, each left-padded to the curve size: node's `dsaEncoding: 'ieee-p1363'` form. */
export function ecdsaToP1363(sig: EcdsaSignature, curveSize: number): Uint8Array {
  const out = new Uint8Array(2 * curveSize)
  out.set(fixedWidth(sig.r, curveSize), 0)
  out.set(fixedWidth(sig.s, curveSize), curveSize)
  return out
}

/** DER INTEGER body: minimal, with a 0x00 prefix when the high bit is set (values are positive). */
function derInteger(n: Uint8Array): number[] {
  let i = 0
  while (i < n.length - 1 && n[i] === 0) i++
  const v = [...n.subarray(i)]
  if (v.length === 0) v.push(0)
  if (v[0]! & 0x80) v.unshift(0)
  return [0x02, ...derLength(v.length), ...v]
}

function derLength(n: number): number[] {
  if (n < 0x80) return [n]
  if (n < 0x100) return [0x81, n]
  return [0x82, n >> 8, n & 0xff]
}

/** ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }: the default node:crypto encoding. */
export function ecdsaToDer(sig: EcdsaSignature): Uint8Array {
  const body = [...derInteger(sig.r), ...derInteger(sig.s)]
  return Uint8Array.from([0x30, ...derLength(body.length), ...body])
}
