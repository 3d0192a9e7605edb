/**
 * The CA's journal as the datastore keeps it (which key is in which slot, and when each was made)
 * and the pure helpers rotation and signing share: the rotation fractions, serial bytes. Apart from
 * ca.ts so the CaManager file holds the behaviour only.
 */
import { randomBytes } from 'node:crypto'

export interface X509Slot {
  keyId: string
  /** base64 DER */
  certificate: string
  notBefore: number
  notAfter: number
  /**
   * When the CA was made (notBefore is backdated for relying parties' clock skew). Rotation
   * fractions count from here: with a short ca_ttl the backdating would otherwise let the next CA
   * be prepared and activated in one tick, before any agent could fetch it. Absent in journals
   * written before it existed (notBefore is used then).
   */
  issuedAt?: number
}

export interface JwtSlot {
  keyId: string
  kid: string
  notBefore: number
  notAfter: number
}

export interface Journal {
  x509: { current?: X509Slot; next?: X509Slot; retired: X509Slot[] }
  jwt: { current?: JwtSlot; next?: JwtSlot; retired: JwtSlot[] }
  counter: number
}

export const JOURNAL = 'ca'
export const PREPARE_AT = 1 / 2
export const ACTIVATE_AT = 5 / 6

/**
 * 16 fresh CSPRNG bytes for a serial, cut from a 4 KiB block (each byte handed out once): one
 * randomBytes call per SVID cost more than the certificate's DER encoding.
 */
let serialPool = Buffer.alloc(0)
let serialOffset = 0
export function randomSerialBytes(): Buffer {
  if (serialOffset + 16 > serialPool.length) {
    serialPool = randomBytes(4096)
    serialOffset = 0
  }
  serialOffset += 16
  return serialPool.subarray(serialOffset - 16, serialOffset)
}

export const der = (b64: string) => new Uint8Array(Buffer.from(b64, 'base64'))

export function fraction(
  slot: { notBefore: number; notAfter: number; issuedAt?: number },
  now: number,
): number {
  const from = slot.issuedAt ?? slot.notBefore
  return (now - from) / (slot.notAfter - from)
}
