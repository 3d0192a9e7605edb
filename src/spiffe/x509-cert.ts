/**
 * Certificate parsing helpers shared by X509-SVID issuance (x509-svid.ts) and validation
 * (x509-svid-validate.ts): both read the same extensions and apply the same CA test.
 */
import { X509Certificate as NodeX509 } from 'node:crypto'
import { x509 } from '../common/x509.js'
import { SvidError } from './errors.js'

export type PeculiarCert = InstanceType<typeof x509.X509Certificate>

export const KU = x509.KeyUsageFlags

export function parseCert(der: Uint8Array, what: string): { p: PeculiarCert; n: NodeX509 } {
  try {
    return { p: new x509.X509Certificate(der), n: new NodeX509(der) }
  } catch (err) {
    throw new SvidError(`${what} is not a DER X.509 certificate`, err)
  }
}

export function basicConstraints(
  c: PeculiarCert,
): { ca: boolean; pathLength?: number } | undefined {
  const bc = c.getExtension(x509.BasicConstraintsExtension)
  if (bc === null) return undefined
  return bc.pathLength === undefined ? { ca: bc.ca } : { ca: bc.ca, pathLength: bc.pathLength }
}

export function keyUsage(c: PeculiarCert): number | undefined {
  return c.getExtension(x509.KeyUsagesExtension)?.usages
}

export function uriSans(c: PeculiarCert): string[] {
  const san = c.getExtension(x509.SubjectAlternativeNameExtension)
  if (san === null) return []
  return san.names
    .toJSON()
    .filter((n) => n.type === 'url')
    .map((n) => n.value)
}

export function isCa(c: PeculiarCert): boolean {
  const ku = keyUsage(c)
  return basicConstraints(c)?.ca === true && (ku === undefined || (ku & KU.keyCertSign) !== 0)
}
