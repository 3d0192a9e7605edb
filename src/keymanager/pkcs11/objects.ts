/**
 * Key objects in the token: generation templates, lookup by label and CKA_ID, public key
 * reading and the signing mechanisms. Private keys are made in the token and never leave it:
 * CKA_SENSITIVE and not CKA_EXTRACTABLE (so C_GetAttributeValue(CKA_VALUE) and wrapping fail),
 * CKA_PRIVATE (only a logged-in user sees them) and CKA_TOKEN (they survive the session).
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import type { KeyType } from '../types.js'
import { fromPkcs11, Pkcs11KeyError } from './errors.js'

// DER of the named-curve OIDs: what CKA_EC_PARAMS holds.
const CURVES = {
  'ec-p256': { params: Buffer.from('06082a8648ce3d030107', 'hex'), crv: 'P-256', size: 32 },
  'ec-p384': { params: Buffer.from('06052b81040022', 'hex'), crv: 'P-384', size: 48 },
} as const

const RSA_BITS: Partial<Record<KeyType, number>> = {
  'rsa-2048': 2048,
  'rsa-3072': 3072,
  'rsa-4096': 4096,
}

export interface KeyPairHandles {
  readonly privateKey: pkcs11js.Handle
  readonly publicKey: pkcs11js.Handle
}

/** Generates a key pair in the token, off the event loop (RSA generation takes seconds). */
export async function generatePair(
  p: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  type: KeyType,
  label: string,
  ckaId: Buffer,
): Promise<KeyPairHandles> {
  const common: pkcs11js.Template = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: ckaId },
  ]
  const pub: pkcs11js.Template = [...common, { type: pkcs11js.CKA_VERIFY, value: true }]
  const priv: pkcs11js.Template = [
    ...common,
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: false },
  ]
  let mechanism: number
  if (type === 'ec-p256' || type === 'ec-p384') {
    mechanism = pkcs11js.CKM_EC_KEY_PAIR_GEN
    pub.push({ type: pkcs11js.CKA_EC_PARAMS, value: CURVES[type].params })
  } else {
    const bits = RSA_BITS[type]
    if (bits === undefined) {
      throw new Pkcs11KeyError('ERR_PKCS11', `no PKCS#11 template for ${type}`, 'use ec-p256')
    }
    mechanism = pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN
    pub.push(
      { type: pkcs11js.CKA_MODULUS_BITS, value: bits },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
    )
  }
  try {
    return await p.C_GenerateKeyPairAsync(session, { mechanism }, pub, priv)
  } catch (err) {
    throw fromPkcs11(`generating a ${type} key in the token`, err)
  }
}

/** Every object matching `template` (bounded: a token full of matches is an error, not a hang). */
export function findObjects(
  p: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  template: pkcs11js.Template,
  max = 10_000,
): pkcs11js.Handle[] {
  p.C_FindObjectsInit(session, template)
  try {
    const out: pkcs11js.Handle[] = []
    for (;;) {
      const batch = p.C_FindObjects(session, 256)
      out.push(...batch)
      if (batch.length < 256) return out
      if (out.length >= max) {
        throw new Pkcs11KeyError(
          'ERR_PKCS11',
          `more than ${max} objects match in the token`,
          'remove stale objects from the token',
        )
      }
    }
  } finally {
    p.C_FindObjectsFinal(session)
  }
}

export function readAttr(
  p: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  h: pkcs11js.Handle,
  type: number,
): Buffer {
  const [a] = p.C_GetAttributeValue(session, h, [{ type }])
  if (!(a?.value instanceof Buffer)) {
    throw new Pkcs11KeyError('ERR_PKCS11', `attribute ${type} is not bytes`, 'check the token')
  }
  return a.value
}

/** CKA_EC_POINT is a DER OCTET STRING around 04||X||Y (some old modules return the bare point). */
function unwrapEcPoint(v: Buffer, size: number): Buffer {
  const raw = 1 + 2 * size
  if (v.length === raw && v[0] === 0x04) return v
  if (v[0] === 0x04 && v[1] === raw && v.length === raw + 2) return v.subarray(2)
  if (v[0] === 0x04 && v[1] === 0x81 && v[2] === raw && v.length === raw + 3) return v.subarray(3)
  throw new Pkcs11KeyError(
    'ERR_PKCS11',
    'CKA_EC_POINT is not an uncompressed point',
    'check the token',
  )
}

/** The public half of a key pair as a KeyObject, from the public key object's attributes. */
export function readPublicKey(
  p: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  pub: pkcs11js.Handle,
): KeyObject {
  const keyType = readAttr(p, session, pub, pkcs11js.CKA_KEY_TYPE).readUIntLE(0, 4)
  let key: KeyObject
  if (keyType === pkcs11js.CKK_EC) {
    const params = readAttr(p, session, pub, pkcs11js.CKA_EC_PARAMS)
    const curve = (['ec-p256', 'ec-p384'] as const).find((t) => CURVES[t].params.equals(params))
    if (!curve) {
      throw new Pkcs11KeyError(
        'ERR_PKCS11',
        'the token key is on an unsupported curve',
        'use P-256 or P-384',
      )
    }
    const { crv, size } = CURVES[curve]
    const point = unwrapEcPoint(readAttr(p, session, pub, pkcs11js.CKA_EC_POINT), size)
    key = createPublicKey({
      format: 'jwk',
      key: {
        kty: 'EC',
        crv,
        x: point.subarray(1, 1 + size).toString('base64url'),
        y: point.subarray(1 + size).toString('base64url'),
      },
    })
  } else if (keyType === pkcs11js.CKK_RSA) {
    const n = readAttr(p, session, pub, pkcs11js.CKA_MODULUS)
    const e = readAttr(p, session, pub, pkcs11js.CKA_PUBLIC_EXPONENT)
    key = createPublicKey({
      format: 'jwk',
      key: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') },
    })
  } else {
    throw new Pkcs11KeyError(
      'ERR_PKCS11',
      `unsupported token key type ${keyType}`,
      'use EC or RSA keys',
    )
  }
  return key
}

export type SignScheme = 'default' | 'pss'

/**
 * Signs `data` as Signer.sign() specifies: ECDSA over a software SHA-256/384 digest (CKM_ECDSA
 * returns r||s, already the P1363 form), RSA PKCS#1 v1.5 or PSS with SHA-256 hashed in the token
 * (the data is a TBS certificate or JWS input, a few KiB at most). C_SignAsync runs on a libuv
 * worker thread, so the event loop keeps running while the token works.
 */
export async function signWith(
  p: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  key: pkcs11js.Handle,
  type: KeyType,
  data: Uint8Array,
  scheme: SignScheme = 'default',
): Promise<Uint8Array> {
  let mechanism: pkcs11js.Mechanism
  let input: Buffer
  let outLen: number
  if (type === 'ec-p256' || type === 'ec-p384') {
    mechanism = { mechanism: pkcs11js.CKM_ECDSA }
    input = createHash(type === 'ec-p384' ? 'sha384' : 'sha256')
      .update(data)
      .digest()
    outLen = 2 * CURVES[type].size
  } else {
    mechanism =
      scheme === 'pss'
        ? {
            mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS,
            parameter: {
              type: pkcs11js.CK_PARAMS_RSA_PSS,
              hashAlg: pkcs11js.CKM_SHA256,
              mgf: pkcs11js.CKG_MGF1_SHA256,
              saltLen: 32,
            } as pkcs11js.RsaPSS as pkcs11js.IParams,
          }
        : { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }
    input = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    outLen = (RSA_BITS[type] ?? 4096) / 8
  }
  p.C_SignInit(session, mechanism, key)
  const sig = await p.C_SignAsync(session, input, Buffer.alloc(outLen))
  if (sig.length !== outLen) {
    throw new Pkcs11KeyError(
      'ERR_PKCS11',
      `the token returned a ${sig.length}-byte signature, expected ${outLen}`,
      'check the token firmware; the signature was not used',
    )
  }
  return new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength)
}

/**
 * What signWith's default scheme does, for a signing thread (sign-thread.ts): the mechanism,
 * the software hash ECDSA needs first, the signature length.
 */
export function batchMechanism(type: KeyType): {
  mechanism: number
  hash?: 'sha256' | 'sha384'
  outLen: number
} {
  if (type === 'ec-p256' || type === 'ec-p384') {
    return {
      mechanism: pkcs11js.CKM_ECDSA,
      hash: type === 'ec-p384' ? 'sha384' : 'sha256',
      outLen: 2 * CURVES[type].size,
    }
  }
  return { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS, outLen: (RSA_BITS[type] ?? 4096) / 8 }
}

/** Whether the session's token offers RSA-PSS with SHA-256 (SoftHSM2 does; many smart cards do not). */
export function hasPss(p: pkcs11js.PKCS11, session: pkcs11js.Handle): boolean {
  try {
    const slot = p.C_GetSessionInfo(session).slotID
    return p.C_GetMechanismList(slot).includes(pkcs11js.CKM_SHA256_RSA_PKCS_PSS)
  } catch {
    return false
  }
}
