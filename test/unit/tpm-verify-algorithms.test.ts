import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto'
import { test } from 'node:test'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import { TPM_ALG, TPM_ECC_CURVE } from '../../src/tpm/constants.js'
import { TPM_ST_ATTEST } from '../../src/tpm/structures/attest.js'
import { marshalPcrSelection } from '../../src/tpm/structures/pcr.js'
import {
  marshalTpmtPublic,
  objectName,
  type PublicTemplate,
  parseTpmtPublic,
  publicFromKeyObject,
  publicKeyObject,
  type TpmPublic,
} from '../../src/tpm/structures/public.js'
import { marshalSignature } from '../../src/tpm/structures/signature.js'
import { akTemplate, signingKeyTemplate } from '../../src/tpm/templates.js'
import { TpmVerifyError, verifyCertify, verifyQuote } from '../../src/tpm/verify.js'

// Software AKs (the public areas a TPM would report) signing hand-built TPMS_ATTEST, so every
// algorithm combination can be tried, including ones a well-behaved TPM never produces.

const reasonOf = (fn: () => unknown): string | undefined => {
  try {
    fn()
  } catch (err) {
    if (err instanceof TpmVerifyError) return err.reason
    throw err
  }
  return undefined
}

function attest(type: number, nonce: Uint8Array, body: Uint8Array): Uint8Array {
  const head = Buffer.alloc(4 + 2 + 2 + 2 + nonce.length + 17 + 8)
  let o = head.writeUInt32BE(0xff544347, 0)
  o = head.writeUInt16BE(type, o)
  o = head.writeUInt16BE(0, o)
  o = head.writeUInt16BE(nonce.length, o)
  Buffer.from(nonce).copy(head, o)
  return new Uint8Array(Buffer.concat([head, body]))
}

const quoteMessage = (nonce: Uint8Array) => {
  const digest = Buffer.concat([Buffer.of(0, 32), Buffer.alloc(32)])
  return attest(TPM_ST_ATTEST.QUOTE, nonce, Buffer.concat([marshalPcrSelection([]), digest]))
}

const HASH_NAME: Record<number, string> = {
  [TPM_ALG.SHA1]: 'sha1',
  [TPM_ALG.SHA256]: 'sha256',
  [TPM_ALG.SHA384]: 'sha384',
}

/** A TPMT_SIGNATURE over `msg` by `priv` with the given scheme and hash. */
function tpmSign(msg: Uint8Array, priv: KeyObject, sigAlg: number, hashAlg: number): Uint8Array {
  const hash = HASH_NAME[hashAlg]!
  if (sigAlg === TPM_ALG.ECDSA) {
    const p1363 = sign(hash, msg, { key: priv, dsaEncoding: 'ieee-p1363' })
    const half = p1363.length / 2
    return marshalSignature({
      sigAlg: TPM_ALG.ECDSA,
      hashAlg,
      r: new Uint8Array(p1363.subarray(0, half)),
      s: new Uint8Array(p1363.subarray(half)),
    })
  }
  const raw =
    sigAlg === TPM_ALG.RSAPSS
      ? sign(hash, msg, { key: priv, padding: 6, saltLength: 32 })
      : sign(hash, msg, priv)
  return marshalSignature({
    sigAlg: sigAlg as typeof TPM_ALG.RSASSA,
    hashAlg,
    sig: new Uint8Array(raw),
  })
}

function eccAk(over: Partial<PublicTemplate> = {}): { pub: TpmPublic; priv: KeyObject } {
  const k = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const t = { ...akTemplate('ecc-p256'), ...over } as PublicTemplate
  return { pub: publicFromKeyObject(k.publicKey, t), priv: k.privateKey }
}

function rsaAk(bits = 2048): { pub: TpmPublic; priv: KeyObject } {
  const k = generateKeyPairSync('rsa', { modulusLength: bits })
  return { pub: publicFromKeyObject(k.publicKey, akTemplate('rsa-2048')), priv: k.privateKey }
}

test('quotes: SHA-256 by default, the signature must use the AK scheme and hash', () => {
  const nonce = randomBytes(32)
  const msg = quoteMessage(nonce)
  const ak = eccAk()
  verifyQuote({
    akPublic: ak.pub,
    message: msg,
    signature: tpmSign(msg, ak.priv, TPM_ALG.ECDSA, TPM_ALG.SHA256),
    nonce,
  })
  // A valid signature with SHA-1 (or SHA-384) by an AK whose scheme says SHA-256: a downgrade.
  for (const hash of [TPM_ALG.SHA1, TPM_ALG.SHA384]) {
    const signature = tpmSign(msg, ak.priv, TPM_ALG.ECDSA, hash)
    assert.equal(
      reasonOf(() => verifyQuote({ akPublic: ak.pub, message: msg, signature, nonce })),
      'algorithm',
    )
    assert.equal(
      reasonOf(() =>
        verifyQuote({
          akPublic: ak.pub,
          message: msg,
          signature,
          nonce,
          policy: { allowSha1: true },
        }),
      ),
      'algorithm',
    )
  }
  // RSA AK with an RSASSA scheme: an RSA-PSS signature is another scheme.
  const rsa = rsaAk()
  verifyQuote({
    akPublic: rsa.pub,
    message: msg,
    signature: tpmSign(msg, rsa.priv, TPM_ALG.RSASSA, TPM_ALG.SHA256),
    nonce,
  })
  const pss = tpmSign(msg, rsa.priv, TPM_ALG.RSAPSS, TPM_ALG.SHA256)
  assert.equal(
    reasonOf(() => verifyQuote({ akPublic: rsa.pub, message: msg, signature: pss, nonce })),
    'algorithm',
  )
})

test('SHA-1 AKs and signatures only with allowSha1', () => {
  const nonce = randomBytes(32)
  const msg = quoteMessage(nonce)
  const ak = eccAk({ scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA1 } })
  const signature = tpmSign(msg, ak.priv, TPM_ALG.ECDSA, TPM_ALG.SHA1)
  assert.equal(
    reasonOf(() => verifyQuote({ akPublic: ak.pub, message: msg, signature, nonce })),
    'algorithm',
  )
  verifyQuote({ akPublic: ak.pub, message: msg, signature, nonce, policy: { allowSha1: true } })
  // A bare key (tpm check-quote) has no scheme, but the hash policy still applies.
  assert.equal(
    reasonOf(() =>
      verifyQuote({ akPublic: publicKeyObject(ak.pub), message: msg, signature, nonce }),
    ),
    'algorithm',
  )
})

test('a restricted AK with a NULL scheme, RSA under 2048 bits and unknown curves are refused', () => {
  const nonce = randomBytes(32)
  const msg = quoteMessage(nonce)
  const nullScheme = eccAk({ scheme: { scheme: TPM_ALG.NULL } })
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: nullScheme.pub,
        message: msg,
        signature: tpmSign(msg, nullScheme.priv, TPM_ALG.ECDSA, TPM_ALG.SHA256),
        nonce,
      }),
    ),
    'algorithm',
  )
  const small = rsaAk(1024)
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: small.pub,
        message: msg,
        signature: tpmSign(msg, small.priv, TPM_ALG.RSASSA, TPM_ALG.SHA256),
        nonce,
      }),
    ),
    'algorithm',
  )
  // BN P-256 (0x0010): the TPM may have it; we do not accept it.
  const base = akTemplate('ecc-p256') as Extract<PublicTemplate, { type: 'ecc' }>
  const bn = parseTpmtPublic(
    marshalTpmtPublic({
      ...base,
      curveId: 0x0010,
      x: new Uint8Array(32).fill(1),
      y: new Uint8Array(32).fill(2),
    }),
  )
  assert.notEqual(bn.type === 'ecc' && bn.curveId, TPM_ECC_CURVE.NIST_P256)
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: bn,
        message: msg,
        signature: tpmSign(msg, nullScheme.priv, TPM_ALG.ECDSA, TPM_ALG.SHA256),
        nonce,
      }),
    ),
    'algorithm',
  )
  // A bare RSA-1024 key is refused too.
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey,
        message: msg,
        signature: tpmSign(msg, small.priv, TPM_ALG.RSASSA, TPM_ALG.SHA256),
        nonce,
      }),
    ),
    'algorithm',
  )
})

test('certify: the certified key needs a SHA-256+ nameAlg unless allowSha1', () => {
  const nonce = randomBytes(32)
  const ak = eccAk()
  const k = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const certified = publicFromKeyObject(k.publicKey, {
    ...signingKeyTemplate('ecc-p256'),
    nameAlg: TPM_ALG.SHA1,
  } as PublicTemplate)
  const name = objectName(certified)
  const body = Buffer.concat([Buffer.of(0, name.length), name, Buffer.of(0, 0)])
  const msg = attest(TPM_ST_ATTEST.CERTIFY, nonce, body)
  const input = {
    akPublic: ak.pub,
    message: msg,
    signature: tpmSign(msg, ak.priv, TPM_ALG.ECDSA, TPM_ALG.SHA256),
    nonce,
    certifiedPublic: certified,
  }
  assert.equal(
    reasonOf(() => verifyCertify(input)),
    'algorithm',
  )
  verifyCertify({ ...input, policy: { allowSha1: true } })
})

test('allow_sha1 is a bool config key and logs a warning when the attestor starts', () => {
  const hash = 'ab'.repeat(32)
  assert.equal(parseTpmServerConfig({ ek_hashes: [hash] }, '/').allowSha1, false)
  const cfg = parseTpmServerConfig({ ek_hashes: [hash], allow_sha1: true }, '/')
  assert.equal(cfg.allowSha1, true)
  assert.throws(() => parseTpmServerConfig({ ek_hashes: [hash], allow_sha1: 'yes' }, '/'), {
    code: 'ERR_CONFIG',
  })
  const logged: [string, string][] = []
  tpmServerAttestor(cfg, (level, msg) => logged.push([level, msg]))
  assert.equal(logged.length, 1)
  assert.equal(logged[0]![0], 'warn')
  assert.match(logged[0]![1], /allow_sha1/)
  const quiet: string[] = []
  tpmServerAttestor(parseTpmServerConfig({ ek_hashes: [hash] }, '/'), (_l, m) => quiet.push(m))
  assert.deepEqual(quiet, [])
})
