import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { TpmContext } from '../../src/tpm/context.js'
import { decodeCredentialFile, makeCredential } from '../../src/tpm/credential.js'
import { createAk, createSigningKey, openEk, openSrk } from '../../src/tpm/keys.js'
import { parsePcrSpec } from '../../src/tpm/structures/pcr.js'
import { objectName, parseTpm2bPublic, publicKeyObject } from '../../src/tpm/structures/public.js'
import { verifyCertify, verifyQuote } from '../../src/tpm/verify.js'
import { cli, run } from '../helpers/exec.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-attest-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const cases = [
  { ek: 'rsa-2048', ak: 'ecc-p256' },
  { ek: 'rsa-2048', ak: 'rsa-2048' },
  { ek: 'ecc-p384', ak: 'ecc-p256' },
  { ek: 'ecc-p256', ak: 'rsa-2048' },
] as const

for (const c of cases) {
  test(`our MakeCredential to a ${c.ek} EK is activated by our addon for a ${c.ak} AK, and only for it`, async () => {
    await using sim = await startSwtpm()
    await using tpm = await TpmContext.open(sim.tcti)
    await using srk = await openSrk(tpm)
    // Blobs first: swtpm holds three loaded objects, and TPM2_Create needs a free slot.
    const akBlob = await createAk(tpm, srk, c.ak)
    const other = parseTpm2bPublic((await createAk(tpm, srk, c.ak)).public)
    await using ak = await tpm.loadKey(srk, akBlob)
    await using ek = await openEk(tpm, c.ek)
    const secret = randomBytes(32)
    const cred = makeCredential(ek.public, ak.name, secret)
    const got = await tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret)
    assert.equal(hex(got), hex(secret))
    // A credential made for another key's Name does not activate with this AK.
    const wrong = makeCredential(ek.public, objectName(other), secret)
    await assert.rejects(
      tpm.activateCredential(ak, ek, wrong.credentialBlob, wrong.encryptedSecret),
      { code: 'ERR_TPM' },
    )
    // SRK, AK and (when not persisted) the EK: the policy sessions were flushed.
    assert.equal(await tpm.loadedTransientCount(), ek.persistent ? 2 : 3)
  })
}

test('a credential made by tpm2_makecredential is activated by our addon', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using ek = await openEk(tpm, 'rsa-2048')
  await using srk = await openSrk(tpm)
  await using ak = await tpm.loadKey(srk, await createAk(tpm, srk))
  const ekPub = join(dir, 'ek.pub')
  assert.equal(
    (await run('tpm2_readpublic', ['-T', sim.tcti, '-c', '0x81010001', '-o', ekPub])).code,
    0,
  )
  const secret = randomBytes(20)
  writeFileSync(join(dir, 'secret'), secret)
  const mk = await run('tpm2_makecredential', [
    '-T',
    'none',
    '-e',
    ekPub,
    '-s',
    join(dir, 'secret'),
    '-n',
    hex(ak.name),
    '-o',
    join(dir, 'cred'),
  ])
  assert.equal(mk.code, 0, mk.stderr)
  const cred = decodeCredentialFile(readFileSync(join(dir, 'cred')))
  assert.equal(
    hex(await tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret)),
    hex(secret),
  )
})

test('a quote made by our addon verifies with our verifier, including PCR values read by the addon', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  await using ak = await tpm.loadKey(srk, await createAk(tpm, srk))
  const selection = parsePcrSpec('sha256:0,1,2,3,4,5,6,7,8,9,10+sha1:0,7')
  const nonce = randomBytes(32)
  const q = await tpm.quote(ak, nonce, selection)
  const pcrValues = await tpm.pcrRead(selection)
  assert.equal(pcrValues.get(0x0b)?.size, 11, 'more than 8 PCRs are read in several calls')
  const v = verifyQuote({
    akPublic: ak.public,
    message: q.message,
    signature: q.signature,
    nonce,
    pcrValues,
    requiredPcrs: parsePcrSpec('sha256:0,7'),
  })
  assert.equal(v.attest.attested.kind, 'quote')
  assert.throws(
    () =>
      verifyQuote({
        akPublic: ak.public,
        message: q.message,
        signature: q.signature,
        nonce: randomBytes(32),
      }),
    { reason: 'nonce' },
  )
})

test('tpm quote writes evidence that tpm2_checkquote and tpm check-quote accept, and reuses its AK', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const out = join(dir, 'ev')
  const nonce = hex(randomBytes(16))
  const q1 = await cli([
    'tpm',
    'quote',
    '--tcti',
    sim.tcti,
    '--nonce',
    nonce,
    '--pcrs',
    'sha256:0,1,7',
    '--out',
    out,
    '--json',
  ])
  assert.equal(q1.code, 0, q1.stderr)
  const s1 = JSON.parse(q1.stdout) as { ak_created: boolean; ak_name: string }
  assert.equal(s1.ak_created, true)
  const f = (n: string) => join(out, n)
  const tools = await run('tpm2_checkquote', [
    '-u',
    f('ak.pem'),
    '-m',
    f('quote.msg'),
    '-s',
    f('quote.sig'),
    '-q',
    nonce,
    '-g',
    'sha256',
  ])
  assert.equal(tools.code, 0, tools.stderr)
  const ours = await cli([
    'tpm',
    'check-quote',
    '--ak',
    f('ak.pem'),
    '--message',
    f('quote.msg'),
    '--signature',
    f('quote.sig'),
    '--nonce',
    nonce,
    '--pcrs',
    f('pcrs.bin'),
    '--require',
    'sha256:7',
  ])
  assert.equal(ours.code, 0, ours.stderr)
  const wrongNonce = await cli([
    'tpm',
    'check-quote',
    '--ak',
    f('ak.pem'),
    '--message',
    f('quote.msg'),
    '--signature',
    f('quote.sig'),
    '--nonce',
    hex(randomBytes(16)),
    '--json',
  ])
  assert.equal(wrongNonce.code, 1)
  assert.equal(JSON.parse(wrongNonce.stderr).error.code, 'ERR_TPM_VERIFY')
  const toolsWrong = await run('tpm2_checkquote', [
    '-u',
    f('ak.pem'),
    '-m',
    f('quote.msg'),
    '-s',
    f('quote.sig'),
    '-q',
    hex(randomBytes(16)),
    '-g',
    'sha256',
  ])
  assert.notEqual(toolsWrong.code, 0)
  // A second run reuses the AK blob from --out.
  const q2 = await cli([
    'tpm',
    'quote',
    '--tcti',
    sim.tcti,
    '--nonce',
    nonce,
    '--out',
    out,
    '--json',
  ])
  const s2 = JSON.parse(q2.stdout) as { ak_created: boolean; ak_name: string }
  assert.equal(s2.ak_created, false)
  assert.equal(s2.ak_name, s1.ak_name)
  const pcrs = JSON.parse(readFileSync(f('pcrs.json'), 'utf8')) as Record<
    string,
    Record<string, string>
  >
  assert.deepEqual(Object.keys(pcrs.sha256 ?? {}), ['0', '1', '7'])
})

test('the agent key is certified by the AK: verifyCertify binds it to the nonce and its Name', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  const akBlob = await createAk(tpm, srk)
  const keyBlob = await createSigningKey(tpm, srk)
  const other = parseTpm2bPublic((await createSigningKey(tpm, srk)).public)
  await using ak = await tpm.loadKey(srk, akBlob)
  await using key = await tpm.loadKey(srk, keyBlob)
  const nonce = randomBytes(32)
  const c = await tpm.certify(key, ak, nonce)
  const v = verifyCertify({
    akPublic: ak.public,
    message: c.message,
    signature: c.signature,
    nonce,
    certifiedPublic: key.public,
  })
  assert.equal(hex(v.name), hex(key.name))
  assert.throws(
    () =>
      verifyCertify({
        akPublic: ak.public,
        message: c.message,
        signature: c.signature,
        nonce,
        certifiedPublic: other,
      }),
    { reason: 'name' },
  )
  // And what the certified key signs verifies with its public key (signature stays in the TPM).
  const digest = randomBytes(32)
  const sig = await tpm.sign(key, digest)
  assert.ok(sig.length > 64)
  assert.equal(publicKeyObject(key.public).asymmetricKeyType, 'ec')
})
