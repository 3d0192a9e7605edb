import assert from 'node:assert/strict'
import {
  constants,
  createDecipheriv,
  createECDH,
  createHmac,
  createPublicKey,
  generateKeyPairSync,
  privateDecrypt,
} from 'node:crypto'
import { test } from 'node:test'
import {
  CREDENTIAL_FILE_MAGIC,
  decodeCredentialFile,
  encodeCredentialFile,
  kdfa,
  kdfe,
  makeCredential,
  parseIdObject,
} from '../../src/tpm/credential.js'
import { TpmStructureError } from '../../src/tpm/errors.js'
import {
  type EccPublic,
  parseTpm2bPublic,
  type RsaPublic,
  TPMA_OBJECT,
} from '../../src/tpm/structures/public.js'
import { Reader } from '../../src/tpm/structures/reader.js'
import { recordedPublics } from '../fixtures/tpm-publics.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const none = new Uint8Array()
const SHA256 = 0x000b
const SHA384 = 0x000c

const KEY = fromHex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f')
const Z = Uint8Array.from({ length: 48 }, (_, i) => 48 + i)
const AK_NAME = fromHex(recordedPublics['rsa-2048']!.name)

// Expected values computed independently with OpenSSL 3.0:
//   openssl kdf -keylen N -kdfopt mac:HMAC -kdfopt digest:SHA2-256 -kdfopt hexkey:K
//     -kdfopt hexsalt:<label> -kdfopt hexinfo:<context> KBKDF        (SP 800-108 = KDFa)
//   openssl kdf -keylen N -kdfopt digest:SHA2-384 -kdfopt hexkey:Z
//     -kdfopt hexinfo:<label 00 U V> SSKDF                           (SP 800-56A = KDFe)
test('KDFa equals OpenSSL KBKDF (HMAC, counter mode) for one and several blocks', () => {
  assert.equal(
    hex(kdfa(SHA256, KEY, 'STORAGE', AK_NAME, none, 128)),
    'f2613b52fc1efc979562e6b484035d5e',
  )
  assert.equal(
    hex(kdfa(SHA384, KEY, 'INTEGRITY', none, none, 520)),
    '6485285999770771af3eb7ff426876fcc70d0bd23495a49e9cfbdd70f0b79a50' +
      '5cb1cc5a0c6605782cd820eb30ffd4f0832c30fe36f993b6dcd93949acd8ffb0c1',
  )
})

test('KDFe equals OpenSSL SSKDF (hash) for SHA-384 and a multi-block SHA-256 output', () => {
  const u = fromHex('aabbcc')
  const v = fromHex('ddeeff')
  assert.equal(
    hex(kdfe(SHA384, Z, 'IDENTITY', u, v, 384)),
    '4e7386afec10ea3e5fc5596fd83c782a9d975ad1eb97968272670d99f062a1af' +
      'efd25630ffe3288cd55793a4f19f783a',
  )
  assert.equal(
    hex(kdfe(SHA256, Z, 'IDENTITY', u, v, 320)),
    'b6945ddb3345d77acabd1f7d8544527430341a47578daa8bf8299d4b3da33b914b63a3377ea70f37',
  )
})

test('KDFs are deterministic, size their output in bits and terminate labels once', () => {
  assert.deepEqual(kdfa(SHA256, KEY, 'X', none, none, 256), kdfa(SHA256, KEY, 'X', none, none, 256))
  assert.deepEqual(kdfa(SHA256, KEY, 'X', none, none, 64), kdfa(SHA256, KEY, 'X\0', none, none, 64))
  assert.deepEqual(kdfe(SHA256, Z, 'X', none, none, 64), kdfe(SHA256, Z, 'X\0', none, none, 64))
  assert.notDeepEqual(
    kdfa(SHA256, KEY, 'A', none, none, 64),
    kdfa(SHA256, KEY, 'B', none, none, 64),
  )
  for (const bits of [1, 8, 13, 255, 256, 257, 1000]) {
    for (const out of [
      kdfa(SHA256, KEY, 'L', none, none, bits),
      kdfe(SHA384, Z, 'L', none, none, bits),
    ]) {
      assert.equal(out.length, Math.ceil(bits / 8), `${bits} bits`)
      // The spec keeps the low `bits` bits: the excess high bits of the first byte are zero.
      if (bits % 8 !== 0) assert.equal(out[0]! >> (bits % 8), 0, `${bits} bits`)
    }
  }
  assert.throws(() => kdfa(SHA256, KEY, 'L', none, none, 0), RangeError)
  assert.throws(() => kdfa(0x0099, KEY, 'L', none, none, 8), TpmStructureError)
})

function tpm2bAt(bytes: Uint8Array): { body: Uint8Array; rest: Uint8Array } {
  const r = new Reader(bytes, 'test')
  const body = r.sized('body')
  return { body, rest: bytes.subarray(r.position) }
}

test('MakeCredential for the recorded RSA-2048 EK has the sizes tpm2_makecredential writes', () => {
  const ek = parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic))
  const secret = new Uint8Array(32).fill(7)
  const cred = makeCredential(ek, AK_NAME, secret)
  // TPM2B_ID_OBJECT: size, TPM2B_DIGEST(HMAC-SHA256), encrypted TPM2B_DIGEST(secret).
  assert.equal(cred.credentialBlob.length, 2 + 2 + 32 + 2 + 32)
  assert.equal(hex(cred.credentialBlob.subarray(0, 4)), '00440020')
  // TPM2B_ENCRYPTED_SECRET: one RSA-2048 OAEP block.
  assert.equal(cred.encryptedSecret.length, 2 + 256)
  assert.equal(hex(cred.encryptedSecret.subarray(0, 2)), '0100')
  const parts = parseIdObject(cred.credentialBlob)
  assert.equal(parts.integrityHmac.length, 32)
  assert.equal(parts.encIdentity.length, 34)
  // A fresh seed each time.
  assert.notDeepEqual(makeCredential(ek, AK_NAME, secret), cred)
})

test('MakeCredential for the recorded P-384 EK carries an ephemeral point on P-384', () => {
  const ek = parseTpm2bPublic(fromHex(recordedPublics['ecc-p384']!.tpm2bPublic))
  const secret = new Uint8Array(48).fill(1)
  const cred = makeCredential(ek, AK_NAME, secret)
  assert.equal(cred.credentialBlob.length, 2 + 2 + 48 + 2 + 48, 'SHA-384 HMAC and a 48-byte secret')
  const { body, rest } = tpm2bAt(cred.encryptedSecret)
  assert.equal(rest.length, 0)
  const x = tpm2bAt(body)
  const y = tpm2bAt(x.rest)
  assert.equal(x.body.length, 48)
  assert.equal(y.body.length, 48)
  assert.equal(y.rest.length, 0)
  const point = createPublicKey({
    key: {
      kty: 'EC',
      crv: 'P-384',
      x: Buffer.from(x.body).toString('base64url'),
      y: Buffer.from(y.body).toString('base64url'),
    },
    format: 'jwk',
  })
  assert.equal(point.asymmetricKeyDetails?.namedCurve, 'secp384r1')
})

test('MakeCredential refuses oversized or empty secrets and keys that are not EKs', () => {
  const rsa = parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic))
  const code = (fn: () => unknown) => {
    try {
      fn()
    } catch (err) {
      return (err as { code?: string }).code
    }
    return 'no error'
  }
  assert.equal(
    code(() => makeCredential(rsa, AK_NAME, new Uint8Array(33))),
    'ERR_TPM_STRUCTURE',
  )
  assert.equal(
    code(() => makeCredential(rsa, AK_NAME, new Uint8Array(0))),
    'ERR_TPM_STRUCTURE',
  )
  assert.equal(
    code(() => makeCredential(rsa, new Uint8Array(1), new Uint8Array(8))),
    'ERR_TPM_STRUCTURE',
  )
  // A restricted signing key cannot protect a credential.
  const signer = parseTpm2bPublic(fromHex(recordedPublics['ecc-p256']!.tpm2bPublic))
  assert.equal(
    code(() => makeCredential(signer, AK_NAME, new Uint8Array(8))),
    'ERR_TPM_UNSUPPORTED',
  )
})

// A test-side TPM2_ActivateCredential with the private key, written from the spec, to show the
// pieces fit together for keys whose private half we hold (the integration test uses a real TPM).
function activate(
  cred: ReturnType<typeof makeCredential>,
  name: Uint8Array,
  seed: Uint8Array,
  hash: string,
  nameAlg: number,
): Uint8Array {
  const { integrityHmac, encIdentity } = parseIdObject(cred.credentialBlob)
  const hmacKey = kdfa(nameAlg, seed, 'INTEGRITY', none, none, integrityHmac.length * 8)
  const expected = createHmac(hash, hmacKey).update(encIdentity).update(name).digest()
  assert.equal(hex(expected), hex(integrityHmac), 'outer HMAC')
  const symKey = kdfa(nameAlg, seed, 'STORAGE', name, none, 128)
  const d = createDecipheriv('aes-128-cfb', symKey, Buffer.alloc(16))
  const plain = Buffer.concat([d.update(encIdentity), d.final()])
  return new Uint8Array(tpm2bAt(plain).body)
}

const EK_ATTRS =
  TPMA_OBJECT.fixedTPM |
  TPMA_OBJECT.fixedParent |
  TPMA_OBJECT.sensitiveDataOrigin |
  TPMA_OBJECT.restricted |
  TPMA_OBJECT.decrypt
const AES128_CFB = { algorithm: 0x0006, keyBits: 128, mode: 0x0043 }

test('a software RSA EK recovers the secret with OAEP "IDENTITY" and the spec KDFs', () => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const n = Buffer.from(publicKey.export({ format: 'jwk' }).n!, 'base64url')
  const ek: RsaPublic = {
    type: 'rsa',
    nameAlg: SHA256,
    objectAttributes: EK_ATTRS,
    authPolicy: none,
    symmetric: AES128_CFB,
    scheme: { scheme: 0x0010 },
    keyBits: 2048,
    exponent: 0,
    modulus: new Uint8Array(n),
    raw: none,
  }
  const secret = new Uint8Array(Buffer.from('a credential secret'))
  const cred = makeCredential(ek, AK_NAME, secret)
  const seed = privateDecrypt(
    {
      key: privateKey,
      padding: constants.RSA_PKCS1_OAEP_PADDING,
      oaepHash: 'sha256',
      oaepLabel: Buffer.from('IDENTITY\0'),
    },
    tpm2bAt(cred.encryptedSecret).body,
  )
  assert.equal(seed.length, 32)
  assert.deepEqual(activate(cred, AK_NAME, seed, 'sha256', SHA256), secret)
  // Another Name does not authenticate: ActivateCredential would fail its integrity check.
  const other = Uint8Array.from(AK_NAME, (b, i) => (i === 5 ? b ^ 1 : b))
  assert.throws(() => activate(cred, other, seed, 'sha256', SHA256), assert.AssertionError)
})

test('a software P-256 EK recovers the secret through ECDH and KDFe', () => {
  const ecdh = createECDH('prime256v1')
  const pub = ecdh.generateKeys()
  const ek: EccPublic = {
    type: 'ecc',
    nameAlg: SHA256,
    objectAttributes: EK_ATTRS,
    authPolicy: none,
    symmetric: AES128_CFB,
    scheme: { scheme: 0x0010 },
    curveId: 0x0003,
    kdf: { scheme: 0x0010 },
    x: new Uint8Array(pub.subarray(1, 33)),
    y: new Uint8Array(pub.subarray(33)),
    raw: none,
  }
  const secret = new Uint8Array(32).fill(0xa5)
  const cred = makeCredential(ek, AK_NAME, secret)
  const point = tpm2bAt(cred.encryptedSecret).body
  const x = tpm2bAt(point)
  const y = tpm2bAt(x.rest)
  const z = ecdh.computeSecret(Buffer.concat([Buffer.of(4), x.body, y.body]))
  const seed = kdfe(SHA256, z, 'IDENTITY', x.body, ek.x, 256)
  assert.deepEqual(activate(cred, AK_NAME, seed, 'sha256', SHA256), secret)
})

test('the tpm2-tools credential file round-trips and rejects what is not one', () => {
  const ek = parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic))
  const cred = makeCredential(ek, AK_NAME, new Uint8Array(16).fill(3))
  const file = encodeCredentialFile(cred)
  assert.equal(new DataView(file.buffer).getUint32(0), CREDENTIAL_FILE_MAGIC)
  assert.equal(hex(file.subarray(0, 8)), 'badcc0de00000001')
  assert.equal(file.length, 8 + cred.credentialBlob.length + cred.encryptedSecret.length)
  const back = decodeCredentialFile(file)
  assert.deepEqual(back.credentialBlob, cred.credentialBlob)
  assert.deepEqual(back.encryptedSecret, cred.encryptedSecret)
  const bad: Uint8Array[] = [
    new Uint8Array(),
    Uint8Array.from([0xba, 0xdc, 0xc0, 0xdf, ...file.subarray(4)]),
    Uint8Array.from([...file.subarray(0, 7), 2, ...file.subarray(8)]),
    Uint8Array.from([...file, 0]),
    file.subarray(0, file.length - 1),
  ]
  for (const b of bad) assert.throws(() => decodeCredentialFile(b), TpmStructureError)
})
