/**
 * A minimal DER writer and reader for the two hot paths that must not go through a general ASN.1
 * library: building leaf X509-SVID TBSCertificates and reading CSRs. @peculiar/x509 costs about 4 ms
 * per certificate (ASN.1 object trees plus asynchronous WebCrypto calls); these fixed shapes take
 * tens of microseconds, which is what lets the server sign at close to raw signature speed (see
 * docs/benchmarks.md). The reader also serves x509-cert.ts (the fields validation reads); CA
 * issuance stays on @peculiar/x509.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { SvidError } from './errors.js'

function lengthBytes(n: number): number[] {
  if (n < 0x80) return [n]
  const out: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff)
  return [0x80 | out.length, ...out]
}

/** One TLV. */
export function tlv(tag: number, ...content: Uint8Array[]): Uint8Array {
  let len = 0
  for (const c of content) len += c.length
  const head = [tag, ...lengthBytes(len)]
  const out = new Uint8Array(head.length + len)
  out.set(head, 0)
  let o = head.length
  for (const c of content) {
    out.set(c, o)
    o += c.length
  }
  return out
}

export const seq = (...c: Uint8Array[]) => tlv(0x30, ...c)

/** A non-negative INTEGER from big-endian magnitude bytes (leading zeros trimmed, sign byte added). */
export function uint(bytes: Uint8Array): Uint8Array {
  let i = 0
  while (i < bytes.length - 1 && bytes[i] === 0) i++
  const trimmed = bytes.subarray(i)
  return (trimmed[0] ?? 0) & 0x80 ? tlv(0x02, Uint8Array.of(0), trimmed) : tlv(0x02, trimmed)
}

/** Encoded OIDs by dotted string: callers pass constants, so this stays small (capped anyway). */
const oidCache = new Map<string, Uint8Array>()

/** The DER OID for `dotted`. The bytes are shared: callers must not modify them. */
export function oid(dotted: string): Uint8Array {
  const hit = oidCache.get(dotted)
  if (hit) return hit
  const enc = encodeOid(dotted)
  if (oidCache.size < 256) oidCache.set(dotted, enc)
  return enc
}

function encodeOid(dotted: string): Uint8Array {
  const parts = dotted.split('.').map(Number)
  const out: number[] = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f]
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128))
      chunk.unshift(0x80 | (v & 0x7f))
    out.push(...chunk)
  }
  return tlv(0x06, Uint8Array.from(out))
}

const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'))

export const octets = (b: Uint8Array) => tlv(0x04, b)
export const bits = (b: Uint8Array) => tlv(0x03, Uint8Array.of(0), b)
export const boolTrue = Uint8Array.of(0x01, 0x01, 0xff)
export const printable = (s: string) => tlv(0x13, utf8(s))
export const utf8String = (s: string) => tlv(0x0c, utf8(s))

/** UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5). Built from the UTC fields
 * (no ISO string and regex: this runs twice per SVID the server signs). */
export function time(d: Date): Uint8Array {
  const y = d.getUTCFullYear()
  const two = (n: number) => (n < 10 ? `0${n}` : `${n}`)
  const rest = `${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}Z`
  return y < 2050 ? tlv(0x17, utf8(`${two(y % 100)}${rest}`)) : tlv(0x18, utf8(`${y}${rest}`))
}

/** ECDSA r||s (IEEE P1363) to the DER Ecdsa-Sig-Value X.509 signatures carry. */
export function p1363ToDer(sig: Uint8Array): Uint8Array {
  const half = sig.length / 2
  return seq(uint(sig.subarray(0, half)), uint(sig.subarray(half)))
}

// ------------------------------------------------------------------ reading

export interface Tlv {
  readonly tag: number
  /** The whole TLV. */
  readonly raw: Uint8Array
  readonly value: Uint8Array
}

/** Reads one TLV at `offset`; every length is bounds-checked. */
export function readTlv(buf: Uint8Array, offset: number, what: string): Tlv & { end: number } {
  const bad = () => new SvidError(`${what}: malformed DER at byte ${offset}`)
  if (offset + 2 > buf.length) throw bad()
  const tag = buf[offset]!
  // DER only: no high tag numbers (which other readers would see as another tag), minimal lengths.
  if ((tag & 0x1f) === 0x1f) throw bad()
  let len = buf[offset + 1]!
  let head = 2
  if (len & 0x80) {
    const n = len & 0x7f
    if (n === 0 || n > 3 || offset + 2 + n > buf.length) throw bad()
    if (buf[offset + 2] === 0) throw bad()
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i]!
    if (len < 0x80) throw bad()
    head += n
  }
  const end = offset + head + len
  if (end > buf.length) throw bad()
  return { tag, raw: buf.subarray(offset, end), value: buf.subarray(offset + head, end), end }
}

/** The children of a constructed TLV's value. */
export function children(value: Uint8Array, what: string): Tlv[] {
  const out: Tlv[] = []
  for (let o = 0; o < value.length; ) {
    const t = readTlv(value, o, what)
    out.push(t)
    o = t.end
  }
  return out
}

const EC_CURVES: Readonly<Record<string, string>> = {
  'P-256': '1.2.840.10045.3.1.7',
  'P-384': '1.3.132.0.34',
  'P-521': '1.3.132.0.35',
}

const spkiCache = new WeakMap<KeyObject, Uint8Array>()

/**
 * DER SubjectPublicKeyInfo of a public key, built from its JWK: in Node 20 with OpenSSL 3,
 * KeyObject.export({type: 'spki'}) costs ~175 µs for an EC key, the JWK export ~5 µs, and this is
 * on the path of every SVID the server signs.
 */
export function spkiOf(key: KeyObject): Uint8Array {
  const cached = spkiCache.get(key)
  if (cached) return cached
  const jwk = key.export({ format: 'jwk' })
  const out =
    spkiFromPublicJwk(jwk as Record<string, unknown>) ??
    new Uint8Array(key.export({ type: 'spki', format: 'der' }))
  spkiCache.set(key, out)
  return out
}

const EC_SIZES: Readonly<Record<string, number>> = { 'P-256': 32, 'P-384': 48, 'P-521': 66 }

/**
 * Whether (x, y) is a point of the curve, as OpenSSL's import checked before the JWK was compared
 * as bytes: without it an x5c certificate with an off-curve key (which OpenSSL and Go's x509
 * cannot read) would enter a bundle and be served to workloads. The JWK import alone (~0.1 ms)
 * does it; the certificate parse and the two SPKI exports the old check also made are not needed.
 */
function onCurve(crv: string, x: string, y: string): boolean {
  try {
    createPublicKey({ key: { kty: 'EC', crv, x, y }, format: 'jwk' })
    return true
  } catch {
    return false
  }
}

/** Bytes of a base64url string in its one canonical spelling (no padding), else undefined. */
function strictBase64url(v: unknown): Uint8Array | undefined {
  if (typeof v !== 'string' || v === '' || !/^[A-Za-z0-9_-]+$/.test(v)) return undefined
  const b = Buffer.from(v, 'base64url')
  return b.toString('base64url') === v ? new Uint8Array(b) : undefined
}

/**
 * The DER SubjectPublicKeyInfo a public JWK's members spell (EC on a named curve, or RSA), built
 * without OpenSSL; undefined when the members are missing, of the wrong size, not canonical
 * base64url or (EC) off the curve. Comparing it with a certificate's SPKI bytes says whether the
 * JWK is that certificate's key: with OpenSSL 3 the JWK import and two SPKI exports cost ~0.5 ms.
 */
export function spkiFromPublicJwk(jwk: Record<string, unknown>): Uint8Array | undefined {
  if (jwk.kty === 'EC') {
    const size = typeof jwk.crv === 'string' ? EC_SIZES[jwk.crv] : undefined
    const x = strictBase64url(jwk.x)
    const y = strictBase64url(jwk.y)
    // RFC 7518 wants full-size coordinates; a shorter one (an encoder that trims leading zero
    // octets) is the same number, as OpenSSL's JWK import read it.
    if (!size || !x || !y || x.length > size || y.length > size) return undefined
    // The members as given: strictBase64url has checked they are canonical.
    if (!onCurve(jwk.crv as string, jwk.x as string, jwk.y as string)) return undefined
    const point = new Uint8Array(1 + 2 * size)
    point[0] = 0x04
    point.set(x, 1 + size - x.length)
    point.set(y, 1 + 2 * size - y.length)
    return ecSpki(jwk.crv as string, point)
  }
  if (jwk.kty === 'RSA') {
    const n = strictBase64url(jwk.n)
    const e = strictBase64url(jwk.e)
    if (!n || !e) return undefined
    return seq(
      seq(oid('1.2.840.113549.1.1.1'), Uint8Array.of(0x05, 0x00)),
      bits(seq(uint(n), uint(e))),
    )
  }
  return undefined
}

/** The DER SubjectPublicKeyInfo of an EC public key given as its uncompressed point. */
export function ecSpki(crv: string, point: Uint8Array): Uint8Array {
  const curveOid = EC_CURVES[crv]
  if (!curveOid) throw new SvidError(`unsupported curve ${crv}`)
  return seq(seq(oid('1.2.840.10045.2.1'), oid(curveOid)), bits(point))
}

/**
 * Records the SPKI of a key whose canonical encoding the caller has just built from the same
 * numbers the key was imported from (the CSR path), so spkiOf need not export it again.
 */
export function rememberSpki(key: KeyObject, spkiDer: Uint8Array): void {
  spkiCache.set(key, spkiDer)
}

const CURVE_BY_OID: ReadonlyMap<string, { crv: string; size: number }> = new Map([
  [Buffer.from(oid('1.2.840.10045.3.1.7')).toString('hex'), { crv: 'P-256', size: 32 }],
  [Buffer.from(oid('1.3.132.0.34')).toString('hex'), { crv: 'P-384', size: 48 }],
])

/**
 * A JWK for an EC SubjectPublicKeyInfo, or undefined for other keys. Importing a JWK costs about
 * half what importing the same key as DER does (OpenSSL 3 decoders), and the server imports one
 * key per SVID it signs.
 */
export function ecJwkFromSpki(
  spkiDer: Uint8Array,
): { kty: 'EC'; crv: string; x: string; y: string; point: Uint8Array } | undefined {
  const outer = readTlv(spkiDer, 0, 'SubjectPublicKeyInfo')
  const [alg, key] = children(outer.value, 'SubjectPublicKeyInfo')
  if (alg?.tag !== 0x30 || key?.tag !== 0x03) return undefined
  const [algOid, params] = children(alg.value, 'AlgorithmIdentifier')
  if (!algOid || !Buffer.from(algOid.raw).equals(EC_PUBLIC_KEY_OID)) return undefined
  const curve = params ? CURVE_BY_OID.get(Buffer.from(params.raw).toString('hex')) : undefined
  const point = key.value.subarray(1)
  if (!curve || point[0] !== 0x04 || point.length !== 1 + 2 * curve.size) return undefined
  const b64 = (x: Uint8Array) => Buffer.from(x.buffer, x.byteOffset, x.length).toString('base64url')
  return {
    kty: 'EC',
    crv: curve.crv,
    x: b64(point.subarray(1, 1 + curve.size)),
    y: b64(point.subarray(1 + curve.size)),
    point,
  }
}

const EC_PUBLIC_KEY_OID = Buffer.from(oid('1.2.840.10045.2.1'))
