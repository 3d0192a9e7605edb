/**
 * PKCS#10 CSRs, used only to convey a public key with proof of possession (as SPIRE does): the
 * server takes the key and ignores every other CSR field. Creating one goes through a Signer, so
 * the key may be in a TPM or HSM.
 */
import { createPublicKey, verify as cryptoVerify, KeyObject } from 'node:crypto'
import { SpiffeEdgeError } from '../errors.js'
import * as der from './der.js'
import type { Signer } from './signer.js'

/** The CSR's subject (the server ignores it; SPIRE agents send the same shape). */
const SUBJECT = der.seq(der.tlv(0x31, der.seq(der.oid('2.5.4.10'), der.utf8String('spiffe-edge'))))
const NULL = Uint8Array.of(0x05, 0x00)

/** The signature AlgorithmIdentifier for what sign() makes (hashOf: SHA-384 only with P-384). */
function signatureAlgorithm(keyType: Signer['keyType']): Uint8Array {
  if (keyType === 'ec-p256') return der.seq(der.oid('1.2.840.10045.4.3.2'))
  if (keyType === 'ec-p384') return der.seq(der.oid('1.2.840.10045.4.3.3'))
  return der.seq(der.oid('1.2.840.113549.1.1.11'), NULL)
}

/**
 * A DER PKCS#10 CSR for the signer's key, signed by it. Built with the small DER writer rather
 * than @peculiar/x509: the agent makes one on every attestation and SVID batch, and the library
 * took ~1.9 ms of CPU for each (ASN.1 schema serialising, WebCrypto key import, re-parsing its own
 * output) against ~0.05 ms here, on the event loop the TPM and TLS work of an attestation share.
 */
export async function createCsr(signer: Signer): Promise<Uint8Array> {
  const info = der.seq(
    der.uint(Uint8Array.of(0)),
    SUBJECT,
    der.spkiOf(signer.publicKey),
    der.tlv(0xa0), // no attributes
  )
  const raw = await signer.sign(info)
  const sig = signer.keyType.startsWith('ec-') ? der.p1363ToDer(raw) : raw
  return der.seq(info, signatureAlgorithm(signer.keyType), der.bits(sig))
}

export class CsrError extends SpiffeEdgeError {
  constructor(message: string) {
    super('ERR_CSR_INVALID', message, {
      remedy: 'send a DER PKCS#10 CSR signed by the key it names',
    })
  }
}

const CSR_SIGNATURE_HASHES: ReadonlyMap<string, string> = new Map([
  [Buffer.from(der.oid('1.2.840.10045.4.3.2')).toString('hex'), 'sha256'],
  [Buffer.from(der.oid('1.2.840.10045.4.3.3')).toString('hex'), 'sha384'],
  [Buffer.from(der.oid('1.2.840.113549.1.1.11')).toString('hex'), 'sha256'],
  [Buffer.from(der.oid('1.2.840.113549.1.1.12')).toString('hex'), 'sha384'],
])

/**
 * An uncompressed EC point as a public KeyObject. WebCrypto's raw import decodes the point,
 * refusing any that is not on the curve (P-256 and P-384 have cofactor 1, so that is the whole
 * validity check); a JWK import checks that too and then also multiplies the point by the group
 * order, which costs another ~20 µs per CSR (measured, docs/benchmarks.md).
 */
async function importEcPoint(crv: string, point: Uint8Array): Promise<KeyObject> {
  const k = await globalThis.crypto.subtle.importKey(
    'raw',
    point,
    { name: 'ECDSA', namedCurve: crv },
    true,
    ['verify'],
  )
  return KeyObject.from(k)
}

/**
 * The CSR's public key, after checking the CSR is signed by it (proof of possession). Read with
 * the small DER reader rather than @peculiar/x509: the server does this once per SVID, and the
 * library costs over a millisecond where this costs one signature verification.
 */
export async function publicKeyFromCsr(csrDer: Uint8Array): Promise<KeyObject> {
  let key: KeyObject
  let signed: Uint8Array
  let signature: Uint8Array
  let hash: string | undefined
  try {
    const outer = der.readTlv(csrDer, 0, 'CSR')
    if (outer.tag !== 0x30 || outer.end !== csrDer.length) throw new Error('not one SEQUENCE')
    const [info, alg, sig] = der.children(outer.value, 'CSR')
    if (info?.tag !== 0x30 || alg?.tag !== 0x30 || sig?.tag !== 0x03) throw new Error('bad shape')
    const [, , spki] = der.children(info.value, 'CertificationRequestInfo')
    if (spki?.tag !== 0x30) throw new Error('no SubjectPublicKeyInfo')
    const [algOid] = der.children(alg.value, 'AlgorithmIdentifier')
    hash = algOid ? CSR_SIGNATURE_HASHES.get(Buffer.from(algOid.raw).toString('hex')) : undefined
    if (sig.value[0] !== 0) throw new Error('signature BIT STRING has unused bits')
    const ec = der.ecJwkFromSpki(spki.raw)
    key = ec
      ? await importEcPoint(ec.crv, ec.point)
      : createPublicKey({ key: Buffer.from(spki.raw), format: 'der', type: 'spki' })
    // The CA embeds the key it signs for; it must never embed bytes the requester chose. Only the
    // canonical DER of the parsed key is accepted (junk inside or around the SPKI, long-form or
    // non-minimal lengths, unused bits, extra parameters all differ from it). For EC the
    // canonical form is built from the very curve and point the key was imported from (the
    // import refuses points off the curve), which saves exporting the key again per SVID.
    const canonical = ec ? der.ecSpki(ec.crv, ec.point) : der.spkiOf(key)
    if (!Buffer.from(canonical).equals(Buffer.from(spki.raw))) {
      throw new Error('SubjectPublicKeyInfo is not the canonical DER encoding of its key')
    }
    if (ec) der.rememberSpki(key, canonical)
    signed = info.raw
    signature = sig.value.subarray(1)
  } catch (err) {
    throw new CsrError(`CSR does not parse: ${(err as Error).message}`)
  }
  if (!hash)
    throw new CsrError('CSR signature algorithm is not ECDSA or RSA PKCS#1 with SHA-256/384')
  const type = key.asymmetricKeyType
  const curve = key.asymmetricKeyDetails?.namedCurve
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
  const e = key.asymmetricKeyDetails?.publicExponent ?? 0n
  // What an SVID may carry (SPIRE's key types): EC P-256/P-384, RSA 2048-4096 with a sane
  // exponent. Ed25519 is refused: SPIRE does not issue it and many TLS stacks reject such SVIDs.
  if (
    !(
      (type === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1')) ||
      (type === 'rsa' &&
        bits >= 2048 &&
        bits <= 4096 &&
        e >= 3n &&
        e <= 0xffffffffn &&
        e % 2n === 1n)
    )
  ) {
    const size = type === 'rsa' ? `/${bits}` : curve ? `/${curve}` : ''
    throw new CsrError(
      `CSR key type ${type}${size} is not allowed (EC P-256/P-384 or RSA 2048-4096 only)`,
    )
  }
  let ok = false
  try {
    ok = cryptoVerify(hash, signed, key, signature)
  } catch {
    ok = false
  }
  if (!ok) throw new CsrError('CSR signature does not verify with its own public key')
  return key
}
