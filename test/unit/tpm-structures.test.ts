import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { test } from 'node:test'
import { TpmStructureError } from '../../src/tpm/errors.js'
import {
  parseHandles,
  parseTpmProperties,
  propertyString,
} from '../../src/tpm/structures/capability.js'
import { parseTpm2bNvPublic } from '../../src/tpm/structures/nv.js'
import {
  keyAlgorithmLabel,
  objectName,
  parseTpm2bPublic,
  publicFromKeyObject,
  publicKeyObject,
  publicKeySpki,
  TPMA_OBJECT,
} from '../../src/tpm/structures/public.js'
import { eccEkTemplate, rsaEkTemplate } from '../../src/tpm/templates.js'
import { recordedPublics } from '../fixtures/tpm-publics.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))

for (const rec of Object.values(recordedPublics)) {
  test(`a recorded ${rec.label} public area parses; its Name and SPKI hash equal tpm2-tools'`, () => {
    const pub = parseTpm2bPublic(fromHex(rec.tpm2bPublic))
    assert.equal(keyAlgorithmLabel(pub), rec.label)
    assert.equal(hex(objectName(pub)), rec.name)
    assert.equal(createHash('sha256').update(publicKeySpki(pub)).digest('hex'), rec.spkiSha256)
  })
}

test('EK attributes decode as the TCG EK template sets them', () => {
  const ek = parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic))
  const a = ek.objectAttributes
  for (const bit of [
    'fixedTPM',
    'fixedParent',
    'sensitiveDataOrigin',
    'adminWithPolicy',
    'restricted',
    'decrypt',
  ] as const) {
    assert.ok(a & TPMA_OBJECT[bit], bit)
  }
  assert.equal(a & TPMA_OBJECT.sign, 0, 'a standard EK cannot sign')
  assert.equal(
    hex(ek.authPolicy),
    '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa',
  )
})

test('structures that lie or are cut short are TpmStructureErrors', () => {
  const good = fromHex(recordedPublics['ecc-p256']!.tpm2bPublic)
  const cases: [string, Uint8Array][] = [
    ['empty input', new Uint8Array()],
    ['size larger than the data', Uint8Array.from([0xff, 0xff, ...good.subarray(2)])],
    ['size smaller than the structure', Uint8Array.from([0x00, 0x10, ...good.subarray(2)])],
    ['trailing garbage', Uint8Array.from([...good, 0x00])],
    [
      'unknown key type',
      (() => {
        const b = Uint8Array.from(good)
        b[2] = 0x7f
        return b
      })(),
    ],
    [
      'unknown nameAlg',
      (() => {
        const b = Uint8Array.from(good)
        b[5] = 0x99
        return b
      })(),
    ],
  ]
  for (const [name, bytes] of cases) {
    assert.throws(
      () => parseTpm2bPublic(bytes),
      (e: unknown) => e instanceof TpmStructureError && e.code === 'ERR_TPM_STRUCTURE',
      name,
    )
  }
})

test('bounded fuzz: random and mutated public areas never escape as anything but TpmStructureError', () => {
  const seeds = Object.values(recordedPublics).map((r) => fromHex(r.tpm2bPublic))
  const deadline = Date.now() + 1500
  let runs = 0
  while (Date.now() < deadline) {
    runs++
    const seed = seeds[runs % seeds.length]!
    let input: Uint8Array
    switch (runs % 4) {
      case 0:
        input = new Uint8Array(randomBytes(runs % 400))
        break
      case 1:
        input = seed.subarray(0, runs % seed.length)
        break
      default: {
        input = Uint8Array.from(seed)
        for (let i = 0; i < 1 + (runs % 4); i++)
          input[(runs * 7919 + i * 104729) % input.length] = randomBytes(1)[0]!
      }
    }
    try {
      const pub = parseTpm2bPublic(input)
      objectName(pub)
      publicKeySpki(pub)
    } catch (err) {
      if (!(err instanceof TpmStructureError))
        throw new Error(`run ${runs}: ${hex(input)} escaped as ${String(err)}`)
    }
  }
  assert.ok(runs > 1000, `fuzzed ${runs} inputs`)
})

test('capability data parses TPM properties and handles, and rejects the wrong capability', () => {
  const props = fromHex('00000006' + '00000002' + '0000010549424d00' + '0000010653572020')
  const m = parseTpmProperties(props)
  assert.equal(propertyString(m.get(0x105)!), 'IBM')
  assert.equal(propertyString(m.get(0x106)!), 'SW  ')
  assert.deepEqual(
    parseHandles(fromHex('00000001' + '00000002' + '81010001' + '81010016')),
    [0x81010001, 0x81010016],
  )
  assert.throws(() => parseHandles(props), { code: 'ERR_TPM_STRUCTURE' })
  assert.throws(() => parseTpmProperties(fromHex('00000006ffffffff')), {
    code: 'ERR_TPM_STRUCTURE',
  })
})

test('an NV public area parses, and a truncated one does not', () => {
  // EK certificate index as swtpm defines it: 0x01c00002, sha256, PPWRITE|…|AUTHREAD|…, 1016 bytes.
  const nv = fromHex('000e' + '01c00002' + '000b' + '620c0002' + '0000' + '03f8')
  const p = parseTpm2bNvPublic(nv)
  assert.equal(p.nvIndex, 0x01c00002)
  assert.equal(p.dataSize, 1016)
  assert.throws(() => parseTpm2bNvPublic(nv.subarray(0, 9)), { code: 'ERR_TPM_STRUCTURE' })
})

test('an EK public area rebuilt from its key and the TCG template has the recorded Name', () => {
  const rec = recordedPublics['rsa-2048']!
  const ek = parseTpm2bPublic(fromHex(rec.tpm2bPublic))
  const rebuilt = publicFromKeyObject(publicKeyObject(ek), rsaEkTemplate())
  assert.equal(hex(objectName(rebuilt)), rec.name)
  assert.equal(hex(rebuilt.raw), hex(ek.raw))
})

test('a key that does not fit the template is ERR_TPM_STRUCTURE', () => {
  const rsa = publicKeyObject(parseTpm2bPublic(fromHex(recordedPublics['rsa-2048']!.tpm2bPublic)))
  const p384 = publicKeyObject(parseTpm2bPublic(fromHex(recordedPublics['ecc-p384']!.tpm2bPublic)))
  assert.throws(() => publicFromKeyObject(rsa, eccEkTemplate()), { code: 'ERR_TPM_STRUCTURE' })
  assert.throws(() => publicFromKeyObject(p384, eccEkTemplate()), { code: 'ERR_TPM_STRUCTURE' })
  assert.throws(() => publicFromKeyObject(p384, rsaEkTemplate()), { code: 'ERR_TPM_STRUCTURE' })
})
