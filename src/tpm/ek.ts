import { createHash, createPublicKey } from 'node:crypto'
import { x509 } from '../common/x509.js'
import { SpiffeEdgeError } from '../errors.js'
import type { TpmContext } from './context.js'
import { TpmError } from './errors.js'
import { keyAlgorithmLabel, publicKeySpki, type TpmPublic } from './structures/public.js'

/** Where TCG's EK credential profile puts each EK certificate, and where EKs are persisted. */
export interface EkSlot {
  readonly algorithm: 'rsa-2048' | 'ecc-p256' | 'ecc-p384'
  readonly certIndex: number
  readonly persistentHandle: number
}

export const EK_SLOTS: readonly EkSlot[] = [
  { algorithm: 'rsa-2048', certIndex: 0x01c00002, persistentHandle: 0x81010001 },
  { algorithm: 'ecc-p256', certIndex: 0x01c0000a, persistentHandle: 0x81010002 },
  // swtpm and the newer EK profile keep the P-384 EK at the handle matching its NV index.
  { algorithm: 'ecc-p384', certIndex: 0x01c00016, persistentHandle: 0x81010016 },
]

export class EkCertificateError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_EK_CERTIFICATE', message, {
      cause,
      remedy: 'the EK certificate in NV is not a DER X.509 certificate; check the TPM provisioning',
    })
  }
}

/**
 * The DER certificate inside an NV blob. Some TPMs prefix it with a 0x10 0x01 0x00 <u16 len>
 * header, and NV indices are often larger than the certificate (trailing padding): both are
 * handled by reading the outer DER SEQUENCE length.
 */
export function extractDerCertificate(nv: Uint8Array): Uint8Array {
  let bytes = nv
  if (bytes.length > 5 && bytes[0] === 0x10 && bytes[1] === 0x01 && bytes[2] === 0x00) {
    const len = (bytes[3]! << 8) | bytes[4]!
    bytes = bytes.subarray(5, 5 + len)
  }
  if (bytes.length < 2 || bytes[0] !== 0x30) {
    throw new EkCertificateError('EK certificate does not start with a DER SEQUENCE')
  }
  const first = bytes[1]!
  let header = 2
  let length = first
  if (first & 0x80) {
    const n = first & 0x7f
    if (n === 0 || n > 3 || bytes.length < 2 + n) {
      throw new EkCertificateError('EK certificate has an invalid DER length')
    }
    length = 0
    for (let i = 0; i < n; i++) length = (length << 8) | bytes[2 + i]!
    header = 2 + n
  }
  if (header + length > bytes.length) {
    throw new EkCertificateError(
      `EK certificate is truncated: DER says ${header + length} bytes, NV holds ${bytes.length}`,
    )
  }
  return bytes.subarray(0, header + length)
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

export interface EkCertificateInfo {
  readonly der: Uint8Array
  readonly subject: string
  readonly issuer: string
  readonly serialNumber: string
  readonly notBefore: string
  readonly notAfter: string
  /** SHA-256 of the certificate's DER SubjectPublicKeyInfo. */
  readonly publicKeySha256: string
}

export function describeCertificate(der: Uint8Array): EkCertificateInfo {
  let cert: x509.X509Certificate
  try {
    cert = new x509.X509Certificate(der)
  } catch (err) {
    throw new EkCertificateError(`EK certificate does not parse: ${(err as Error).message}`, err)
  }
  // Normalise through OpenSSL so the hash matches `openssl x509 -pubkey | openssl pkey -outform der`.
  const spki = createPublicKey({
    key: Buffer.from(cert.publicKey.rawData),
    format: 'der',
    type: 'spki',
  }).export({ type: 'spki', format: 'der' })
  return {
    der,
    subject: cert.subject,
    issuer: cert.issuer,
    serialNumber: cert.serialNumber,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    publicKeySha256: sha256Hex(spki),
  }
}

export interface EkReport {
  readonly algorithm: EkSlot['algorithm']
  readonly certificateIndex: number
  readonly certificate: EkCertificateInfo | undefined
  /** Set when the certificate index exists but its content does not parse. */
  readonly certificateError: string | undefined
  readonly persistentHandle: number | undefined
  readonly public: TpmPublic | undefined
  /** SHA-256 of the EK's DER SubjectPublicKeyInfo: from the TPM's EK when persisted, else the certificate. */
  readonly publicKeySha256: string | undefined
  readonly publicKeySource: 'tpm' | 'certificate' | undefined
  /** Whether the certificate certifies this TPM's EK (undefined when one side is missing). */
  readonly certificateMatchesKey: boolean | undefined
}

function isHandleMissing(err: unknown): boolean {
  // TPM_RC_HANDLE (0x8b) with any handle number, or the ESAPI "bad TR"/"not found" family.
  return err instanceof TpmError && ((err.rc & 0x3f) === 0x0b || (err.rc & 0xfff) === 0x18b)
}

/** Reads every EK slot: certificate in NV, persistent EK, and whether the two agree. */
export async function readEndorsementKeys(tpm: TpmContext): Promise<EkReport[]> {
  const nvIndices = new Set(await tpm.listHandles(0x01000000))
  const persistent = new Set(await tpm.listHandles(0x81000000))
  const out: EkReport[] = []
  for (const slot of EK_SLOTS) {
    let certificate: EkCertificateInfo | undefined
    let certificateError: string | undefined
    if (nvIndices.has(slot.certIndex)) {
      try {
        certificate = describeCertificate(
          extractDerCertificate(await tpm.nvReadAll(slot.certIndex)),
        )
      } catch (err) {
        if (!(err instanceof SpiffeEdgeError)) throw err
        certificateError = `${err.code}: ${err.message}`
      }
    }
    let pub: TpmPublic | undefined
    if (persistent.has(slot.persistentHandle)) {
      try {
        const area = await tpm.readPublic(slot.persistentHandle)
        if (keyAlgorithmLabel(area.public) === slot.algorithm) pub = area.public
      } catch (err) {
        if (!isHandleMissing(err)) throw err
      }
    }
    if (!certificate && !pub && !certificateError) continue
    const tpmHash = pub ? sha256Hex(publicKeySpki(pub)) : undefined
    out.push({
      algorithm: slot.algorithm,
      certificateIndex: slot.certIndex,
      certificate,
      certificateError,
      persistentHandle: pub ? slot.persistentHandle : undefined,
      public: pub,
      publicKeySha256: tpmHash ?? certificate?.publicKeySha256,
      publicKeySource: tpmHash ? 'tpm' : certificate ? 'certificate' : undefined,
      certificateMatchesKey:
        tpmHash && certificate ? tpmHash === certificate.publicKeySha256 : undefined,
    })
  }
  return out
}
