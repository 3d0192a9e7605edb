import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { TPM_ALG } from '../../src/tpm/constants.js'
import {
  marshalDigestList,
  policyOrDigest,
  policyPcrDigest,
  policySecretDigest,
} from '../../src/tpm/policy.js'
import { parseTpm2bPublic } from '../../src/tpm/structures/public.js'
import { EK_POLICY_C, EK_POLICY_SHA256 } from '../../src/tpm/templates.js'
import { recordedPublics } from '../fixtures/tpm-publics.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const endorsement = Uint8Array.from([0x40, 0x00, 0x00, 0x0b])

test('PolicySecret(endorsement) in SHA-256 is the TCG EK policy of templates L-1/L-2', () => {
  assert.equal(hex(policySecretDigest(TPM_ALG.SHA256, endorsement)), hex(EK_POLICY_SHA256))
})

test("PolicyOR(PolicySecret, PolicyC) in SHA-384 is the recorded P-384 EK's authPolicy", () => {
  const ek = parseTpm2bPublic(Buffer.from(recordedPublics['ecc-p384']!.tpm2bPublic, 'hex'))
  const a = policySecretDigest(TPM_ALG.SHA384, endorsement)
  assert.equal(
    hex(policyOrDigest(TPM_ALG.SHA384, [a, EK_POLICY_C.get(TPM_ALG.SHA384)!])),
    hex(ek.authPolicy),
  )
})

test('a digest list marshals as a TPML_DIGEST', () => {
  assert.equal(
    hex(marshalDigestList([Uint8Array.from([1, 2]), Uint8Array.from([3])])),
    '00000002000201020001' + '03',
  )
})

test('an unknown policy hash is ERR_TPM_STRUCTURE', () => {
  assert.throws(() => policySecretDigest(0x99, endorsement), { code: 'ERR_TPM_STRUCTURE' })
})

// Digests printed by tpm2-tools 5 on a fresh swtpm (PCRs 0-7 all zero in the sha256 bank):
//   tpm2_createpolicy --policy-pcr -l sha256:0,2,4,7 -L pol.bin
// and again after `tpm2_pcrextend 4:sha256=00…01` (PCR 4 = SHA-256(32 zero bytes || 00…01)).
const SEL = [{ hashAlg: TPM_ALG.SHA256, pcrs: [7, 0, 4, 2] }]
const zeros = new Uint8Array(32)
const values = (pcr4: Uint8Array) =>
  new Map([
    [
      TPM_ALG.SHA256,
      new Map([
        [0, zeros],
        [2, zeros],
        [4, pcr4],
        [7, zeros],
      ]),
    ],
  ])

test('PolicyPCR(sha256:0,2,4,7) matches tpm2_createpolicy, before and after an extend of PCR 4', () => {
  assert.equal(
    hex(policyPcrDigest(TPM_ALG.SHA256, SEL, values(zeros))),
    '4f04c837291ac05d8c8fceb5d03ac530d3189c1dd24dc744f2145cf71eaa9cf6',
  )
  const one = new Uint8Array(32)
  one[31] = 1
  const extended = new Uint8Array(createHash('sha256').update(zeros).update(one).digest())
  assert.equal(hex(extended), '90f4b39548df55ad6187a1d20d731ecee78c545b94afd16f42ef7592d99cd365')
  assert.equal(
    hex(policyPcrDigest(TPM_ALG.SHA256, SEL, values(extended))),
    'cc7085129a2b248e56f9e4349d6d1bb0611e4834e1f6207876348d5822f503c1',
  )
})

test('PolicyPCR refuses a selected PCR with no value', () => {
  const partial = new Map([[TPM_ALG.SHA256, new Map([[0, zeros]])]])
  assert.throws(() => policyPcrDigest(TPM_ALG.SHA256, SEL, partial), /no value for PCR 2/)
})
