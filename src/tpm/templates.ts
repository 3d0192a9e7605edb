/**
 * Key templates, as plain data. EKs follow the TCG EK Credential Profile (templates L-1 and L-2) so
 * a recreated EK has exactly the key its certificate names; the SRK follows the TCG provisioning
 * guidance; AKs and signing keys are ours (TPM-bound: fixedTPM, fixedParent, sensitiveDataOrigin).
 */
import { TPM_ALG, TPM_ECC_CURVE } from './constants.js'
import { TPMA_OBJECT as A, type PublicTemplate } from './structures/public.js'

const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))

/** PolicySecret(TPM_RH_ENDORSEMENT): the EK's policy, so only the endorsement hierarchy uses it. */
export const EK_POLICY_SHA256 = hex(
  '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa',
)

/**
 * The high-range EK templates (EK profile 2.x, e.g. swtpm's P-384 EK) use
 * PolicyOR(PolicySecret(endorsement), PolicyAuthorizeNV(…)). These are the second branches, by
 * nameAlg; the policy-session code checks PolicyOR(A, C) equals the EK's authPolicy before use.
 */
export const EK_POLICY_C: ReadonlyMap<number, Uint8Array> = new Map([
  [
    TPM_ALG.SHA384,
    hex(
      'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165',
    ),
  ],
])

const EK_ATTRS =
  A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.adminWithPolicy | A.restricted | A.decrypt
// Keys we create ourselves: bound to this TPM and parent, generated inside it, usable with a
// (empty) password, exempt from dictionary-attack lockout. What each key may do is added per kind.
const OWN_KEY_ATTRS = A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.noDA
const SRK_ATTRS = OWN_KEY_ATTRS | A.restricted | A.decrypt
const AK_ATTRS = OWN_KEY_ATTRS | A.restricted | A.sign
const SIGNING_ATTRS = OWN_KEY_ATTRS | A.sign

const AES128_CFB = { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB }
const NULL_SYM = { algorithm: TPM_ALG.NULL }
const NULL_SCHEME = { scheme: TPM_ALG.NULL }
const empty = new Uint8Array()

export function rsaEkTemplate(): PublicTemplate {
  return {
    type: 'rsa',
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: EK_ATTRS,
    authPolicy: EK_POLICY_SHA256,
    symmetric: AES128_CFB,
    scheme: NULL_SCHEME,
    keyBits: 2048,
    exponent: 0,
    modulus: new Uint8Array(256),
  }
}

export function eccEkTemplate(): PublicTemplate {
  return {
    type: 'ecc',
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: EK_ATTRS,
    authPolicy: EK_POLICY_SHA256,
    symmetric: AES128_CFB,
    scheme: NULL_SCHEME,
    curveId: TPM_ECC_CURVE.NIST_P256,
    kdf: NULL_SCHEME,
    x: new Uint8Array(32),
    y: new Uint8Array(32),
  }
}

/** The storage root key (ECC P-256) that AKs and signing keys are created under. */
export function srkTemplate(): PublicTemplate {
  return {
    type: 'ecc',
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: SRK_ATTRS,
    authPolicy: empty,
    symmetric: AES128_CFB,
    scheme: NULL_SCHEME,
    curveId: TPM_ECC_CURVE.NIST_P256,
    kdf: NULL_SCHEME,
    x: new Uint8Array(32),
    y: new Uint8Array(32),
  }
}

export type KeyAlgorithm = 'ecc-p256' | 'rsa-2048'

function signingTemplate(alg: KeyAlgorithm, attrs: number): PublicTemplate {
  if (alg === 'rsa-2048') {
    return {
      type: 'rsa',
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: attrs,
      authPolicy: empty,
      symmetric: NULL_SYM,
      scheme: { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 },
      keyBits: 2048,
      exponent: 0,
      modulus: empty,
    }
  }
  return {
    type: 'ecc',
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: attrs,
    authPolicy: empty,
    symmetric: NULL_SYM,
    scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
    curveId: TPM_ECC_CURVE.NIST_P256,
    kdf: NULL_SCHEME,
    x: empty,
    y: empty,
  }
}

/** An attestation key: restricted signing, so it signs only TPM-generated attestations. */
export function akTemplate(alg: KeyAlgorithm = 'ecc-p256'): PublicTemplate {
  return signingTemplate(alg, AK_ATTRS)
}

/** A non-exportable general signing key (the agent's own key). */
export function signingKeyTemplate(alg: KeyAlgorithm = 'ecc-p256'): PublicTemplate {
  return signingTemplate(alg, SIGNING_ATTRS)
}

/**
 * A signing key only a policy session may use (userWithAuth clear: the empty password no longer
 * authorizes it), e.g. with authPolicy = PolicyPCR(...) so a boot with other PCR values cannot.
 */
export function policySigningKeyTemplate(
  alg: KeyAlgorithm,
  authPolicy: Uint8Array,
): PublicTemplate {
  return { ...signingTemplate(alg, SIGNING_ATTRS & ~A.userWithAuth), authPolicy }
}
