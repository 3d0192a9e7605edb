/**
 * aws_iid wire types, shared by both halves: the instance identity document exactly as IMDS
 * served it, and one of its signatures (PKCS#7 DSA /pkcs7, PKCS#7 RSA /rsa2048, or the plain
 * RSA-SHA256 /signature), base64. No challenge.
 */
import { CloudAttestationError, encodeJson, parseJsonPayload } from '../common.js'

export const AWS_IID = 'aws_iid'
export const DEFAULT_METADATA_URL = 'http://169.254.169.254'
export const SIGNATURE_KINDS = ['pkcs7', 'rsa2048', 'signature'] as const
export type SignatureKind = (typeof SIGNATURE_KINDS)[number]

export interface AwsPayload {
  readonly version: 1
  readonly document: string
  readonly signatureKind: SignatureKind
  readonly signature: Uint8Array
}

/** Documents are ~500 bytes; signatures under 2 KiB. */
const MAX_DOCUMENT = 8 * 1024
const MAX_SIGNATURE_B64 = 16 * 1024
const B64 = /^[A-Za-z0-9+/]*={0,2}$/

export function encodeAwsPayload(p: Omit<AwsPayload, 'version'>): Uint8Array {
  return encodeJson({
    version: 1,
    document: p.document,
    signature_kind: p.signatureKind,
    signature: Buffer.from(p.signature).toString('base64'),
  })
}

export function parseAwsPayload(bytes: Uint8Array): AwsPayload {
  const o = parseJsonPayload(AWS_IID, bytes, ['version', 'document', 'signature_kind', 'signature'])
  const fail = (why: string): never => {
    throw new CloudAttestationError(AWS_IID, 'payload', why)
  }
  if (
    typeof o.document !== 'string' ||
    o.document.length === 0 ||
    o.document.length > MAX_DOCUMENT
  ) {
    fail(`document must be a non-empty string of at most ${MAX_DOCUMENT} bytes`)
  }
  if (!(SIGNATURE_KINDS as readonly unknown[]).includes(o.signature_kind)) {
    fail(`signature_kind must be one of ${SIGNATURE_KINDS.join(', ')}`)
  }
  const sig = o.signature
  if (typeof sig !== 'string' || sig.length === 0 || sig.length > MAX_SIGNATURE_B64) {
    fail(`signature must be base64 of at most ${MAX_SIGNATURE_B64} characters`)
  }
  const s = (sig as string).replace(/\s+/g, '')
  if (s.length % 4 !== 0 || !B64.test(s)) fail('signature is not base64')
  return {
    version: 1,
    document: o.document as string,
    signatureKind: o.signature_kind as SignatureKind,
    signature: new Uint8Array(Buffer.from(s, 'base64')),
  }
}
