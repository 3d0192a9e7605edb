import assert from 'node:assert/strict'
import { test } from 'node:test'
import { TPM_ALG } from '../../src/tpm/constants.js'
import { marshalDigestList, policyOrDigest, policySecretDigest } from '../../src/tpm/policy.js'
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
