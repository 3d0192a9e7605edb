/**
 * Certificate parsing shared by X509-SVID validation (x509-svid-validate.ts), issuance
 * (x509-svid.ts) and the agent's caches: the fields SPIFFE rules read (validity, serial, public
 * key, extensions: basic constraints, key usage, URI SANs), read with the small DER reader
 * (der.ts). node:crypto's X509Certificate (OpenSSL) parses the whole certificate beside it and
 * verifies signatures. Not @peculiar/x509: with its ASN.1 schemas and reflect-metadata it is
 * ~12 MiB of the agent's RSS (bench/agent-modules.ts), and the agent only reads these fields.
 */
import { X509Certificate as NodeX509 } from 'node:crypto'
import { children, readTlv, type Tlv } from './der.js'
import { SvidError } from './errors.js'

export interface CertExtension {
  /** The extension's OID, dotted. */
  readonly type: string
  readonly critical: boolean
  /** The extnValue OCTET STRING's contents. */
  readonly value: Uint8Array
}

/** What SPIFFE rules read of a certificate, named as @peculiar/x509 names them. */
export interface CertInfo {
  /** Hex of the serial INTEGER's content octets, without a sign octet (as @peculiar/x509). */
  readonly serialNumber: string
  readonly notBefore: Date
  readonly notAfter: Date
  /** The SubjectPublicKeyInfo, DER. */
  readonly spki: Uint8Array
  /** The subjectPublicKey BIT STRING's bits (the key identifier is their SHA-1, RFC 5280). */
  readonly subjectPublicKey: Uint8Array
  readonly extensions: readonly CertExtension[]
  /** The first extension of that OID, as @peculiar/x509's getExtension. */
  getExtension(type: string): CertExtension | null
}

/** Key usage bits as @peculiar/x509's KeyUsageFlags (bit n of the BIT STRING is 2^n). */
export const KU = {
  digitalSignature: 1,
  nonRepudiation: 2,
  keyEncipherment: 4,
  dataEncipherment: 8,
  keyAgreement: 16,
  keyCertSign: 32,
  cRLSign: 64,
  encipherOnly: 128,
  decipherOnly: 256,
} as const

export const OID_BASIC_CONSTRAINTS = '2.5.29.19'
export const OID_KEY_USAGE = '2.5.29.15'
export const OID_SAN = '2.5.29.17'
export const OID_SKI = '2.5.29.14'

function decodeOid(v: Uint8Array, what: string): string {
  if (v.length === 0) throw new SvidError(`${what}: empty OID`)
  const arcs: number[] = []
  let n = 0
  for (let i = 0; i < v.length; i++) {
    n = n * 128 + (v[i]! & 0x7f)
    if (n > Number.MAX_SAFE_INTEGER / 128) throw new SvidError(`${what}: OID arc too large`)
    if (v[i]! & 0x80) continue
    if (arcs.length === 0) arcs.push(n < 80 ? Math.floor(n / 40) : 2, n < 80 ? n % 40 : n - 80)
    else arcs.push(n)
    n = 0
  }
  if (v[v.length - 1]! & 0x80) throw new SvidError(`${what}: truncated OID`)
  return arcs.join('.')
}

const digits = (s: string, what: string) => {
  if (!/^\d+$/.test(s)) throw new SvidError(`${what}: malformed time`)
  return Number(s)
}

/** UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSS[.f]Z). */
function decodeTime(t: Tlv, what: string): Date {
  const s = Buffer.from(t.value).toString('latin1')
  let year: number
  let rest: string
  if (t.tag === 0x17 && s.length === 13) {
    const yy = digits(s.slice(0, 2), what)
    year = yy >= 50 ? 1900 + yy : 2000 + yy
    rest = s.slice(2)
  } else if (t.tag === 0x18 && s.length >= 15) {
    year = digits(s.slice(0, 4), what)
    rest = s.slice(4)
  } else throw new SvidError(`${what}: malformed time`)
  const m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\.\d+)?Z$/.exec(rest)
  if (!m || (t.tag === 0x17 && m[6])) throw new SvidError(`${what}: malformed time`)
  const ms = m[6] ? Math.floor(Number(`0${m[6]}`) * 1000) : 0
  const d = new Date(
    Date.UTC(year, Number(m[1]) - 1, Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5]), ms),
  )
  if (year < 100) d.setUTCFullYear(year)
  return d
}

function readExtensions(t: Tlv | undefined, what: string): CertExtension[] {
  if (t === undefined) return []
  const [list] = children(t.value, what)
  if (list?.tag !== 0x30) throw new SvidError(`${what}: malformed extensions`)
  const seen = new Set<string>()
  return children(list.value, what).map((e) => {
    const f = children(e.value, what)
    const id = f[0]
    const hasCritical = f[1]?.tag === 0x01
    const crit = hasCritical ? f[1] : undefined
    const val = f[hasCritical ? 2 : 1]
    if (e.tag !== 0x30 || id?.tag !== 0x06 || val?.tag !== 0x04 || f.length > (crit ? 3 : 2))
      throw new SvidError(`${what}: malformed extension`)
    if (crit && crit.value.length !== 1) throw new SvidError(`${what}: malformed BOOLEAN`)
    const type = decodeOid(id.value, what)
    // RFC 5280 4.2: at most one instance of an extension. Refused here so no reader can take a
    // different SAN or basic constraints than another (OpenSSL only flags it at verification).
    if (seen.has(type)) throw new SvidError(`${what}: extension ${type} appears more than once`)
    seen.add(type)
    return {
      type,
      critical: crit !== undefined && crit.value[0] !== 0,
      value: val.value,
    }
  })
}

/** Reads the fields of CertInfo from a DER certificate; every length is bounds-checked. */
export function readCert(der: Uint8Array, what = 'certificate'): CertInfo {
  const outer = readTlv(der, 0, what)
  if (outer.tag !== 0x30 || outer.end !== der.length) throw new SvidError(`${what}: not a SEQUENCE`)
  const tbs = children(outer.value, what)[0]
  if (tbs?.tag !== 0x30) throw new SvidError(`${what}: no TBSCertificate`)
  const f = children(tbs.value, what)
  let i = f[0]?.tag === 0xa0 ? 1 : 0 // [0] version
  const serial = f[i++]
  i++ // signature AlgorithmIdentifier
  i++ // issuer Name
  const validity = f[i++]
  i++ // subject Name
  const spki = f[i++]
  if (serial?.tag !== 0x02 || validity?.tag !== 0x30 || spki?.tag !== 0x30)
    throw new SvidError(`${what}: malformed TBSCertificate`)
  const [nb, na] = children(validity.value, what)
  if (!nb || !na) throw new SvidError(`${what}: malformed validity`)
  const key = children(spki.value, what)[1]
  if (key?.tag !== 0x03 || key.value.length === 0) throw new SvidError(`${what}: malformed key`)
  let s = serial.value
  if (s.length > 1 && s[0] === 0 && s[1]! > 0x7f) s = s.subarray(1)
  const extensions = readExtensions(
    f.slice(i).find((t) => t.tag === 0xa3),
    what,
  )
  return {
    serialNumber: Buffer.from(s).toString('hex'),
    notBefore: decodeTime(nb, what),
    notAfter: decodeTime(na, what),
    spki: spki.raw,
    subjectPublicKey: key.value.subarray(1),
    extensions,
    getExtension: (type) => extensions.find((e) => e.type === type) ?? null,
  }
}

/**
 * node:crypto's X509Certificate of exactly these DER bytes. Its constructor tries PEM first, and
 * OpenSSL's PEM reader skips everything before a BEGIN line: DER bytes that carry a PEM block
 * (in a signature, say) would be read as that other certificate. Refused unless OpenSSL's
 * certificate is byte for byte the input, so every reader sees one certificate.
 */
export function nodeCertFromDer(der: Uint8Array): NodeX509 {
  const n = new NodeX509(der)
  if (!Buffer.from(n.raw).equals(Buffer.from(der.buffer, der.byteOffset, der.byteLength)))
    throw new SvidError('the bytes are not one DER certificate (OpenSSL read another)')
  return n
}

export function parseCert(der: Uint8Array, what: string): { p: CertInfo; n: NodeX509 } {
  try {
    return { p: readCert(der, what), n: nodeCertFromDer(der) }
  } catch (err) {
    throw new SvidError(`${what} is not a DER X.509 certificate`, err)
  }
}

export function basicConstraints(c: CertInfo): { ca: boolean; pathLength?: number } | undefined {
  const ext = c.getExtension(OID_BASIC_CONSTRAINTS)
  if (ext === null) return undefined
  const what = 'basic constraints'
  const seq = readTlv(ext.value, 0, what)
  if (seq.tag !== 0x30) throw new SvidError(`${what}: not a SEQUENCE`)
  const f = children(seq.value, what)
  let ca = false
  let k = 0
  if (f[0]?.tag === 0x01) {
    if (f[0].value.length !== 1) throw new SvidError(`${what}: malformed BOOLEAN`)
    ca = f[0].value[0] !== 0
    k = 1
  }
  const len = f[k]
  if (len === undefined) return { ca }
  if (len.tag !== 0x02 || len.value.length === 0 || len.value.length > 4 || len.value[0]! & 0x80)
    throw new SvidError(`${what}: bad pathLenConstraint`)
  let pathLength = 0
  for (const b of len.value) pathLength = pathLength * 256 + b
  return { ca, pathLength }
}

export function keyUsage(c: CertInfo): number | undefined {
  const ext = c.getExtension(OID_KEY_USAGE)
  if (ext === null) return undefined
  const bs = readTlv(ext.value, 0, 'key usage')
  if (bs.tag !== 0x03 || bs.value.length === 0) throw new SvidError('key usage: not a BIT STRING')
  const unused = bs.value[0]!
  if (unused > 7) throw new SvidError('key usage: bad unused-bits count')
  const octets = bs.value.subarray(1)
  const nbits = octets.length * 8 - unused
  let usages = 0
  for (let b = 0; b < nbits && b < 31; b++) {
    if (octets[b >> 3]! & (0x80 >> (b & 7))) usages += 2 ** b
  }
  return usages
}

/** The uniformResourceIdentifier names of the SAN extension, in order. */
export function uriSans(c: CertInfo): string[] {
  const ext = c.getExtension(OID_SAN)
  if (ext === null) return []
  const names = readTlv(ext.value, 0, 'subject alternative name')
  if (names.tag !== 0x30) throw new SvidError('subject alternative name: not a SEQUENCE')
  return children(names.value, 'subject alternative name')
    .filter((n) => n.tag === 0x86)
    .map((n) => Buffer.from(n.value).toString('latin1'))
}

export function isCa(c: CertInfo): boolean {
  const ku = keyUsage(c)
  return basicConstraints(c)?.ca === true && (ku === undefined || (ku & KU.keyCertSign) !== 0)
}
