import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { TPM_ALG, TPM_RH } from '../../src/tpm/constants.js'
import { type KeyBlob, KeyHandle, TpmContext } from '../../src/tpm/context.js'
import { createAk, createSigningKey, openEk, openSrk } from '../../src/tpm/keys.js'
import {
  objectName,
  publicFromKeyObject,
  publicKeyObject,
  TPMA_OBJECT,
} from '../../src/tpm/structures/public.js'
import { eccEkTemplate, rsaEkTemplate } from '../../src/tpm/templates.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

test('an RSA EK recreated from the TCG template is the provisioned EK (same Name)', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  // The Name as the TPM itself reports it (ReadPublic's response), not as ESYS or we hash it;
  // read before the reference below exists (ESYS keeps one reference per persistent handle).
  const reported = (await tpm.readPublic(0x81010001)).name
  await using persistent = await tpm.persistentKey(0x81010001)
  await using recreated = await tpm.createPrimary(TPM_RH.ENDORSEMENT, rsaEkTemplate())
  assert.equal(hex(recreated.name), hex(persistent.name))
  assert.equal(hex(objectName(recreated.public)), hex(recreated.name))
  assert.equal(hex(recreated.name), hex(reported))
})

for (const alg of ['ecc-p256', 'rsa-2048'] as const) {
  test(`a ${alg} AK is a restricted, TPM-bound signing key whose Name we compute as the TPM does`, async () => {
    await using sim = await startSwtpm()
    await using tpm = await TpmContext.open(sim.tcti)
    await using srk = await openSrk(tpm)
    const blob = await createAk(tpm, srk, alg)
    await using ak = await tpm.loadKey(srk, blob)
    const a = ak.public.objectAttributes
    for (const bit of [
      'restricted',
      'sign',
      'fixedTPM',
      'fixedParent',
      'sensitiveDataOrigin',
    ] as const) {
      assert.ok(a & TPMA_OBJECT[bit], bit)
    }
    assert.equal(a & TPMA_OBJECT.decrypt, 0)
    assert.equal(hex(objectName(ak.public)), hex(ak.name))
    // The blob survives a reload (what a restart does) and gives the same key.
    await using again = await tpm.loadKey(srk, blob)
    assert.equal(hex(again.name), hex(ak.name))
  })
}

test('the SRK is deterministic: recreating it in a new context loads the old blobs', async () => {
  await using sim = await startSwtpm()
  let blob: KeyBlob
  {
    await using tpm = await TpmContext.open(sim.tcti)
    await using srk = await openSrk(tpm)
    blob = await createSigningKey(tpm, srk)
  }
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  await using key = await tpm.loadKey(srk, blob)
  assert.ok(key.public.objectAttributes & TPMA_OBJECT.sign)
})

test('openEk finds the persistent RSA EK and recreates a P-256 EK from its template', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using rsa = await openEk(tpm, 'rsa-2048')
  assert.equal(rsa.persistent, true)
  await using p256 = await openEk(tpm, 'ecc-p256')
  assert.equal(p256.persistent, false)
  assert.equal(p256.public.type, 'ecc')
  // From the key alone (as a server has it from an EK certificate) and the template, the same Name.
  const rebuilt = publicFromKeyObject(publicKeyObject(p256.public), eccEkTemplate())
  assert.equal(hex(objectName(rebuilt)), hex(p256.name))
})

test('no handle leaks: 1000 quote and sign cycles leave the transient count flat', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  const akBlob = await createAk(tpm, srk)
  const keyBlob = await createSigningKey(tpm, srk)
  const before = await tpm.loadedTransientCount()
  const sel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 7] }]
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  try {
    for (let i = 0; i < 1000; i++) {
      await using ak = await tpm.loadKey(srk, akBlob)
      await using key = await tpm.loadKey(srk, keyBlob)
      const nonce = createHash('sha256').update(String(i)).digest()
      const q = await tpm.quote(ak, nonce, sel)
      assert.ok(q.message.length > 0 && q.signature.length > 0)
      const sig = await tpm.sign(key, nonce)
      assert.ok(sig.length > 0)
    }
  } finally {
    clearInterval(timer)
  }
  assert.equal(await tpm.loadedTransientCount(), before)
  assert.ok(ticks > 10, `the event loop kept running during the batch (${ticks} timer ticks)`)
})

test('closing a context flushes whatever it still had loaded', async () => {
  await using sim = await startSwtpm()
  {
    const tpm = await TpmContext.open(sim.tcti)
    const srk = await openSrk(tpm)
    assert.equal(srk.persistent, false)
    assert.equal(await tpm.loadedTransientCount(), 1)
    await tpm.close() // srk never disposed: close() must flush it
  }
  await using tpm = await TpmContext.open(sim.tcti)
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test('a disposed key handle refuses further use', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const srk = await openSrk(tpm)
  await srk.dispose()
  await assert.rejects(tpm.createKey(srk, rsaEkTemplate()), { code: 'ERR_TPM_CLOSED' })
})

test('a key handle the context did not load itself is refused, and disposing it flushes nothing', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  await using key = await tpm.loadKey(srk, await createSigningKey(tpm, srk))
  // Same handle number, but not made by this context: it has no owner here, so it is refused
  // before anything reaches the TPM, and the real owner's key stays loaded and usable.
  const forged = new KeyHandle(key.handle, key.public, key.name, false, async () => {})
  await assert.rejects(tpm.sign(forged, new Uint8Array(32)), { code: 'ERR_TPM_CLOSED' })
  await forged.dispose()
  assert.equal(await tpm.loadedTransientCount(), 2)
  assert.ok((await tpm.sign(key, new Uint8Array(32))).length > 0)
})
