/** TPM 2.0 constants used across the codecs (TPM 2.0 Library spec, part 2). */

export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  ECSCHNORR: 0x001c,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CFB: 0x0043,
} as const

export const TPM_ECC_CURVE = { NIST_P256: 0x0003, NIST_P384: 0x0004, NIST_P521: 0x0005 } as const

export const TPM_CAP = { HANDLES: 0x00000001, TPM_PROPERTIES: 0x00000006 } as const

export const TPM_PT = {
  FAMILY_INDICATOR: 0x100,
  LEVEL: 0x101,
  REVISION: 0x102,
  DAY_OF_YEAR: 0x103,
  YEAR: 0x104,
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  VENDOR_STRING_2: 0x107,
  VENDOR_STRING_3: 0x108,
  VENDOR_STRING_4: 0x109,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
  NV_BUFFER_MAX: 0x12c,
} as const

export const TPM_RH = { OWNER: 0x40000001, ENDORSEMENT: 0x4000000b, PLATFORM: 0x4000000c } as const

/** Hash algorithms by TPM id: node crypto name and digest size. */
export const HASH_ALGS: ReadonlyMap<number, { readonly name: string; readonly size: number }> =
  new Map([
    [TPM_ALG.SHA1, { name: 'sha1', size: 20 }],
    [TPM_ALG.SHA256, { name: 'sha256', size: 32 }],
    [TPM_ALG.SHA384, { name: 'sha384', size: 48 }],
    [TPM_ALG.SHA512, { name: 'sha512', size: 64 }],
  ])
