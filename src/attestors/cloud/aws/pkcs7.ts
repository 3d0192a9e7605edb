/**
 * Verifies an AWS instance identity PKCS#7 (CMS SignedData) signature: the /pkcs7 (DSA, SHA-1)
 * and /rsa2048 (RSA, SHA-256) forms. Parsing is @peculiar/asn1-cms (BER, as AWS sends it); the
 * signature is checked with node:crypto, which (unlike WebCrypto, and so pkijs) verifies DSA.
 * The signer is only ever a configured certificate for the region: certificates inside the
 * message are ignored. What is hand-written here is the CMS rule itself (RFC 5652 §5.4: the
 * signature covers the DER SET of the signed attributes, whose messageDigest covers the content).
 */
import { createHash, verify, type X509Certificate } from 'node:crypto'
import { ContentInfo, id_data, id_signedData, SignedData } from '@peculiar/asn1-cms'
import { AsnConvert, OctetString } from '@peculiar/asn1-schema'
import * as asn1js from 'asn1js'

/** A real /pkcs7 answer is ~1.2 KiB, /rsa2048 ~1.5 KiB. */
export const MAX_PKCS7 = 16 * 1024

const DIGESTS: Readonly<Record<string, string>> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
}
const ID_CONTENT_TYPE = '1.2.840.113549.1.9.3'
const ID_MESSAGE_DIGEST = '1.2.840.113549.1.9.4'
const ID_SIGNING_TIME = '1.2.840.113549.1.9.5'

export class Pkcs7Error extends Error {
  readonly kind: 'malformed' | 'signature'
  constructor(kind: 'malformed' | 'signature', message: string) {
    super(message)
    this.kind = kind
  }
}

export interface Pkcs7Result {
  /** The signed content (the instance identity document, byte for byte). */
  readonly content: Uint8Array
  readonly signingTime: Date | undefined
  readonly digest: string
}

/** The bytes of an OCTET STRING, primitive or BER-constructed (AWS sends the latter). */
function octets(any: ArrayBuffer): Uint8Array {
  const r = asn1js.fromBER(any)
  if (r.offset === -1 || !(r.result instanceof asn1js.OctetString)) {
    throw new Pkcs7Error('malformed', 'the encapsulated content is not an OCTET STRING')
  }
  return new Uint8Array(r.result.getValue())
}

export function verifyPkcs7(
  der: Uint8Array,
  certs: readonly X509Certificate[],
  allowSha1: boolean,
): Pkcs7Result {
  if (der.length > MAX_PKCS7)
    throw new Pkcs7Error('malformed', `the PKCS#7 signature is over ${MAX_PKCS7} bytes`)
  let sd: SignedData
  try {
    const ci = AsnConvert.parse(der, ContentInfo)
    if (ci.contentType !== id_signedData)
      throw new Error(`content type ${ci.contentType} is not signedData`)
    sd = AsnConvert.parse(ci.content, SignedData)
  } catch (err) {
    throw new Pkcs7Error('malformed', `not a CMS SignedData: ${(err as Error).message}`)
  }
  if (sd.signerInfos.length !== 1)
    throw new Pkcs7Error('malformed', `${sd.signerInfos.length} signers, expected 1`)
  const eci = sd.encapContentInfo
  if (eci.eContentType !== id_data || !eci.eContent) {
    throw new Pkcs7Error('malformed', 'the signature does not carry the document (id-data content)')
  }
  const content = eci.eContent.single
    ? new Uint8Array(eci.eContent.single.buffer)
    : octets(eci.eContent.any as ArrayBuffer)
  const si = sd.signerInfos[0]!
  const digest = DIGESTS[si.digestAlgorithm.algorithm]
  if (!digest)
    throw new Pkcs7Error('malformed', `digest ${si.digestAlgorithm.algorithm} is not supported`)
  if (digest === 'sha1' && !allowSha1)
    throw new Pkcs7Error('signature', 'SHA-1 signatures are not allowed')
  let signedBytes: Uint8Array = content
  let signingTime: Date | undefined
  if (si.signedAttrs && si.signedAttrs.length > 0) {
    const one = (oid: string): ArrayBuffer | undefined => {
      const found = si.signedAttrs!.filter((a) => a.attrType === oid)
      if (found.length > 1 || (found[0] && found[0].attrValues.length !== 1)) {
        throw new Pkcs7Error('malformed', `signed attribute ${oid} appears more than once`)
      }
      return found[0]?.attrValues[0]
    }
    const ct = one(ID_CONTENT_TYPE)
    const md = one(ID_MESSAGE_DIGEST)
    if (!ct || !md)
      throw new Pkcs7Error('malformed', 'contentType or messageDigest attribute missing')
    const ctOid = asn1js.fromBER(ct).result
    if (!(ctOid instanceof asn1js.ObjectIdentifier) || ctOid.getValue() !== id_data) {
      throw new Pkcs7Error('malformed', 'the contentType attribute is not id-data')
    }
    const want = new Uint8Array(AsnConvert.parse(md, OctetString).buffer)
    const have = createHash(digest).update(content).digest()
    if (!have.equals(want))
      throw new Pkcs7Error('signature', 'the messageDigest does not match the document')
    const st = one(ID_SIGNING_TIME)
    if (st) {
      const t = asn1js.fromBER(st).result
      if (t instanceof asn1js.UTCTime || t instanceof asn1js.GeneralizedTime)
        signingTime = t.toDate()
      else throw new Pkcs7Error('malformed', 'signingTime is not a time')
    }
    // RFC 5652 5.4: the signature is over the attributes' DER as a SET (tag 0x31), not the [0].
    const set = new asn1js.Set({
      value: si.signedAttrs.map((a) => asn1js.fromBER(AsnConvert.serialize(a)).result),
    })
    signedBytes = new Uint8Array(set.toBER())
  }
  const signature = new Uint8Array(si.signature.buffer)
  for (const cert of certs) {
    try {
      if (verify(digest, signedBytes, cert.publicKey, signature))
        return { content, signingTime, digest }
    } catch {
      // A key of another type than the signature: try the next certificate.
    }
  }
  throw new Pkcs7Error(
    'signature',
    'no configured certificate for the region verifies the signature',
  )
}
