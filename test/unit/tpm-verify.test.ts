import assert from 'node:assert/strict'
import {
  constants,
  verify as cryptoVerify,
  generateKeyPairSync,
  randomBytes,
  sign,
} from 'node:crypto'
import { test } from 'node:test'
import { quoteCovers } from '../../src/attestors/tpm/pcr-wire.js'
import { TpmStructureError } from '../../src/tpm/errors.js'
import { parseAttest, TPM_ST_ATTEST } from '../../src/tpm/structures/attest.js'
import {
  formatPcrSpec,
  marshalPcrSelection,
  type PcrSelection,
  parsePcrSelection,
  parsePcrSpec,
  pcrValuesFromConcatenated,
} from '../../src/tpm/structures/pcr.js'
import { parseTpm2bPublic } from '../../src/tpm/structures/public.js'
import {
  ecdsaToDer,
  ecdsaToP1363,
  marshalSignature,
  parseSignature,
  type TpmSignature,
} from '../../src/tpm/structures/signature.js'
import { checkAkAttributes, TpmVerifyError, verifyQuote } from '../../src/tpm/verify.js'
import { recordedPublics } from '../fixtures/tpm-publics.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const SHA1 = 0x0004
const SHA256 = 0x000b

// Recorded from swtpm 0.7.1 with tpm2-tools 5.4: an ECC P-256 AK (tpm2_createak -G ecc -s ecdsa)
// and `tpm2_quote -c ak.ctx -l sha256:0,1,7 -q 00112233445566778899 -g sha256` (PCRs all zero).
const REC = {
  akPub:
    '00580023000b00050072000000100018000b000300100020ce66465f2ad488e2' +
    '52105c2d29d20cc28e3c5867bdd64cdcb055964f7b4eaadc0020d7157fd5166d' +
    '3585c685ed745c5ee4bc684c9a23dd8f8b49a2a4acc62bf967be',
  message:
    'ff54434780180022000b29454778e292617c43964157063ce8c6351116b6bc6e' +
    'bdf666452f8fd2c5f494000a00112233445566778899000000000000247d0000' +
    '00020000000001201910230016363600000001000b0383000000202ea9ab9198' +
    'd1638007400cd2c3bef1cc745b864b76011a0e1bc52180ac6452d4',
  signature:
    '0018000b0020659983f41f4549c6a5bcf79cb3d96e76e058c74b1e1ebaf39490' +
    'f5f009bd846c00202913e345185fb8ec4524fa76f64ead5e3b34142ea7f3f22d' +
    'ce9e97055ac2e8f1',
  nonce: '00112233445566778899',
}
const zeroPcrs = new Uint8Array(3 * 32)

function reasonOf(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (err instanceof TpmVerifyError) return err.reason
    return (err as { code?: string }).code ?? 'not coded'
  }
  return 'no error'
}

test('PCR specs parse like tpm2-tools selection strings and format back', () => {
  assert.deepEqual(parsePcrSpec('sha256:0,1,7+sha1:0'), [
    { hashAlg: SHA256, pcrs: [0, 1, 7] },
    { hashAlg: SHA1, pcrs: [0] },
  ])
  assert.deepEqual(parsePcrSpec('sha256:7,1,1,23'), [{ hashAlg: SHA256, pcrs: [1, 7, 23] }])
  assert.equal(parsePcrSpec('sha384:all')[0]!.pcrs.length, 24)
  assert.equal(formatPcrSpec(parsePcrSpec('sha256:0,1,7+sha1:0')), 'sha256:0,1,7+sha1:0')
  for (const bad of ['', 'sha256', 'md5:0', 'sha256:24', 'sha256:0+sha256:1', 'sha256:a', ':1']) {
    assert.equal(
      reasonOf(() => parsePcrSpec(bad)),
      'ERR_USAGE',
      bad,
    )
  }
})

test('TPML_PCR_SELECTION marshals bit i of byte j as PCR 8j+i and parses back', () => {
  const sel = parsePcrSpec('sha256:0,1,7+sha1:8,23')
  const bytes = marshalPcrSelection(sel)
  assert.equal(hex(bytes), '00000002' + '000b03830000' + '000403000180')
  assert.deepEqual(parsePcrSelection(bytes), sel)
  assert.deepEqual(parsePcrSelection(marshalPcrSelection([])), [])
  assert.throws(() => parsePcrSelection(Uint8Array.from([...bytes, 0])), TpmStructureError)
  assert.throws(() => parsePcrSelection(fromHex('00000001009903ff0000')), TpmStructureError)
})

test('raw concatenated PCR values split in selection order, and only at the exact length', () => {
  const sel = parsePcrSpec('sha256:1,7+sha1:0')
  const raw = Uint8Array.from({ length: 32 + 32 + 20 }, (_, i) => i)
  const v = pcrValuesFromConcatenated(sel, raw)
  assert.equal(v.get(SHA256)?.get(7)?.[0], 32)
  assert.equal(v.get(SHA1)?.get(0)?.length, 20)
  assert.throws(() => pcrValuesFromConcatenated(sel, raw.subarray(1)), TpmStructureError)
  assert.throws(() => pcrValuesFromConcatenated(sel, new Uint8Array(85)), TpmStructureError)
})

test('a recorded tpm2_quote parses: magic, type, nonce, clock, selection and digest', () => {
  const a = parseAttest(fromHex(REC.message))
  assert.equal(a.magic, 0xff544347)
  assert.equal(a.type, TPM_ST_ATTEST.QUOTE)
  assert.equal(hex(a.extraData), REC.nonce)
  assert.equal(a.qualifiedSigner.length, 34)
  assert.equal(a.clockInfo.resetCount, 2)
  assert.equal(a.clockInfo.safe, true)
  assert.equal(a.attested.kind, 'quote')
  if (a.attested.kind === 'quote') {
    assert.equal(formatPcrSpec(a.attested.pcrSelect), 'sha256:0,1,7')
    assert.equal(a.attested.pcrDigest.length, 32)
  }
  assert.equal(hex(a.raw), REC.message)
})

test('TPMS_ATTEST rejects unknown types, trailing bytes and a non-boolean safe flag', () => {
  const msg = fromHex(REC.message)
  const withType = Uint8Array.from(msg)
  withType[5] = 0x19 // TPM_ST_ATTEST_SESSION_AUDIT: not parsed here
  assert.throws(() => parseAttest(withType), TpmStructureError)
  assert.throws(() => parseAttest(Uint8Array.from([...msg, 0])), TpmStructureError)
  const unsafe = Uint8Array.from(msg)
  // magic 4 + type 2 + signer 2+34 + extraData 2+10 + clock 8 + reset 4 + restart 4 → safe
  unsafe[4 + 2 + 36 + 12 + 16] = 2
  assert.throws(() => parseAttest(unsafe), TpmStructureError)
})

test('TPMT_SIGNATURE round-trips; ECDSA converts to DER and P1363 that node:crypto accepts', () => {
  const rec = parseSignature(fromHex(REC.signature))
  assert.equal(rec.sigAlg, 0x0018)
  assert.equal(rec.hashAlg, SHA256)
  assert.equal(hex(marshalSignature(rec)), REC.signature)
  const rsa: TpmSignature = { sigAlg: 0x0014, hashAlg: SHA256, sig: new Uint8Array(256).fill(9) }
  assert.deepEqual(parseSignature(marshalSignature(rsa)), rsa)
  assert.throws(() => parseSignature(fromHex('0010')), TpmStructureError)
  assert.throws(() => parseSignature(fromHex('00140099000100')), TpmStructureError)

  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-384' })
  const data = Buffer.from('attested bytes')
  for (let i = 0; i < 20; i++) {
    const p1363 = sign('sha384', data, { key: privateKey, dsaEncoding: 'ieee-p1363' })
    // TPMs may drop leading zeros or keep one extra; both must convert.
    const r = Uint8Array.from([0, ...p1363.subarray(0, 48)])
    let s = new Uint8Array(p1363.subarray(48))
    while (s[0] === 0) s = s.subarray(1)
    const sig = { sigAlg: 0x0018, hashAlg: 0x000c, r, s } as const
    assert.deepEqual(Buffer.from(ecdsaToP1363(sig, 48)), p1363)
    // node:crypto's default ECDSA encoding is DER.
    assert.ok(cryptoVerify('sha384', data, publicKey, ecdsaToDer(sig)))
  }
  assert.throws(
    () =>
      ecdsaToP1363(
        { sigAlg: 0x0018, hashAlg: SHA256, r: new Uint8Array(33).fill(1), s: new Uint8Array(1) },
        32,
      ),
    TpmStructureError,
  )
})

test('the recorded quote verifies with its AK; each tampering gives its reason', () => {
  const akPublic = parseTpm2bPublic(fromHex(REC.akPub))
  const sel = parsePcrSpec('sha256:0,1,7')
  const good = {
    akPublic,
    message: fromHex(REC.message),
    signature: fromHex(REC.signature),
    nonce: fromHex(REC.nonce),
    pcrValues: pcrValuesFromConcatenated(sel, zeroPcrs),
    requiredPcrs: sel,
  }
  const q = verifyQuote(good)
  assert.equal(formatPcrSpec(q.pcrSelect), 'sha256:0,1,7')
  assert.equal(q.pcrs?.get(SHA256)?.size, 3)
  const message = Uint8Array.from(good.message)
  message[message.length - 1]! ^= 1
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, message })),
    'signature',
  )
  const signature = Uint8Array.from(good.signature)
  signature[10]! ^= 1
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, signature })),
    'signature',
  )
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, nonce: fromHex('0011') })),
    'nonce',
  )
  const pcrs = Uint8Array.from(zeroPcrs)
  pcrs[40] = 1
  const pcrValues = pcrValuesFromConcatenated(sel, pcrs)
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, pcrValues })),
    'pcr_digest',
  )
  const missing = new Map([[SHA256, new Map([[0, new Uint8Array(32)]])]])
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, pcrValues: missing })),
    'pcr_digest',
  )
  const requiredPcrs = parsePcrSpec('sha256:0,7,14')
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, requiredPcrs })),
    'pcr_selection',
  )
  const otherBank = parsePcrSpec('sha1:0')
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, requiredPcrs: otherBank })),
    'pcr_selection',
  )
  // Another key, of the right or the wrong kind, does not verify.
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, akPublic: other })),
    'signature',
  )
  const rsaKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey
  assert.equal(
    reasonOf(() => verifyQuote({ ...good, akPublic: rsaKey })),
    'signature',
  )
})

test('AK attribute checks name a restricted signing key as fit and an EK as not', () => {
  checkAkAttributes(parseTpm2bPublic(fromHex(REC.akPub)))
  checkAkAttributes(parseTpm2bPublic(fromHex(recordedPublics['ecc-p256']!.tpm2bPublic)))
  const ek = parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic))
  assert.equal(
    reasonOf(() => checkAkAttributes(ek)),
    'ak_attributes',
  )
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: ek,
        message: fromHex(REC.message),
        signature: fromHex(REC.signature),
        nonce: fromHex(REC.nonce),
      }),
    ),
    'ak_attributes',
  )
})

/** A TPMS_ATTEST built by hand, for paths a TPM will not produce (bad magic, RSA-PSS). */
function attest(magic: number, type: number, nonce: Uint8Array, attested: Uint8Array): Uint8Array {
  const b = Buffer.alloc(4 + 2 + 2 + 2 + nonce.length + 17 + 8)
  let o = b.writeUInt32BE(magic, 0)
  o = b.writeUInt16BE(type, o)
  o = b.writeUInt16BE(0, o) // empty qualifiedSigner
  o = b.writeUInt16BE(nonce.length, o)
  o += Buffer.from(nonce).copy(b, o)
  return new Uint8Array(Buffer.concat([b, attested]))
}

function quoteBody(sel: PcrSelection, digest: Uint8Array): Uint8Array {
  const d = Buffer.alloc(2)
  d.writeUInt16BE(digest.length)
  return new Uint8Array(Buffer.concat([marshalPcrSelection(sel), d, digest]))
}

test('software-signed attestations: RSASSA and RSA-PSS verify; magic and type are checked', () => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const nonce = randomBytes(20)
  const body = quoteBody([], new Uint8Array(32))
  const signWith = (msg: Uint8Array, alg: 0x0014 | 0x0016) => {
    const raw =
      alg === 0x0016
        ? sign('sha256', msg, {
            key: privateKey,
            padding: constants.RSA_PKCS1_PSS_PADDING,
            saltLength: 32,
          })
        : sign('sha256', msg, privateKey)
    return marshalSignature({ sigAlg: alg, hashAlg: SHA256, sig: new Uint8Array(raw) })
  }
  const good = attest(0xff544347, TPM_ST_ATTEST.QUOTE, nonce, body)
  for (const alg of [0x0014, 0x0016] as const) {
    verifyQuote({ akPublic: publicKey, message: good, signature: signWith(good, alg), nonce })
  }
  const badMagic = attest(0xff544348, TPM_ST_ATTEST.QUOTE, nonce, body)
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: publicKey,
        message: badMagic,
        signature: signWith(badMagic, 0x0014),
        nonce,
      }),
    ),
    'magic',
  )
  const certify = attest(0xff544347, TPM_ST_ATTEST.CERTIFY, nonce, fromHex('00000000'))
  assert.equal(
    reasonOf(() =>
      verifyQuote({
        akPublic: publicKey,
        message: certify,
        signature: signWith(certify, 0x0014),
        nonce,
      }),
    ),
    'type',
  )
})

/** Runs `fn` on random and mutated inputs for `ms`: it may return or throw TpmStructureError. */
function fuzz(label: string, seeds: Uint8Array[], fn: (b: Uint8Array) => unknown, ms: number) {
  const end = Date.now() + ms
  let n = 0
  while (Date.now() < end) {
    const seed = seeds[n % seeds.length]!
    let input: Uint8Array
    switch (n % 4) {
      case 0:
        input = new Uint8Array(randomBytes(n % 200))
        break
      case 1: {
        input = Uint8Array.from(seed)
        for (let k = 0; k < 1 + (n % 4); k++) {
          input[Math.floor(Math.random() * input.length)] = Math.floor(Math.random() * 256)
        }
        break
      }
      case 2:
        input = seed.subarray(0, Math.floor(Math.random() * seed.length))
        break
      default:
        input = Uint8Array.from([...seed, ...randomBytes(1 + (n % 3))])
    }
    try {
      fn(input)
    } catch (err) {
      if (!(err instanceof TpmStructureError)) {
        assert.fail(`${label}: ${hex(input)} threw ${String(err)}`)
      }
    }
    n++
  }
  assert.ok(n > 100, `${label}: only ${n} runs`)
}

test('fuzzed attest, signature and PCR selection inputs only ever throw TpmStructureError', () => {
  const rsaSig = marshalSignature({ sigAlg: 0x0016, hashAlg: SHA256, sig: new Uint8Array(64) })
  const certify = attest(
    0xff544347,
    TPM_ST_ATTEST.CERTIFY,
    new Uint8Array(4),
    fromHex('00020001000100'),
  )
  fuzz('TPMS_ATTEST', [fromHex(REC.message), certify], parseAttest, 400)
  fuzz('TPMT_SIGNATURE', [fromHex(REC.signature), rsaSig], parseSignature, 300)
  fuzz(
    'TPML_PCR_SELECTION',
    [marshalPcrSelection(parsePcrSpec('sha256:0,1,7+sha1:23'))],
    parsePcrSelection,
    300,
  )
})

test("quoteCovers: the agent's read after a quote matches its pcrDigest, or it quotes again", () => {
  const quote = { message: fromHex(REC.message), signature: fromHex(REC.signature) }
  const bank = (seven: Uint8Array) =>
    new Map([
      [
        SHA256,
        new Map([
          [0, new Uint8Array(32)],
          [1, new Uint8Array(32)],
          [7, seven],
        ]),
      ],
    ])
  assert.equal(quoteCovers(quote, bank(new Uint8Array(32))), true)
  // PCR 7 extended between the quote and the read.
  assert.equal(quoteCovers(quote, bank(new Uint8Array(32).fill(1))), false)
  // A value the read did not return.
  assert.equal(quoteCovers(quote, new Map([[SHA256, new Map([[0, new Uint8Array(32)]])]])), false)
})
