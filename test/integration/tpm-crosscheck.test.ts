// Cross-checks the pure server-side TPM crypto against a real TPM (swtpm) driven by tpm2-tools:
// our MakeCredential must activate there, and its quotes and certifications must verify here.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { type Group, runCli } from '../../src/cli/command.js'
import { checkQuoteCommand } from '../../src/cli/tpm-check-quote.js'
import {
  decodeCredentialFile,
  encodeCredentialFile,
  makeCredential,
  parseIdObject,
} from '../../src/tpm/credential.js'
import { parsePcrSpec, pcrValuesFromConcatenated } from '../../src/tpm/structures/pcr.js'
import {
  objectName,
  parseTpm2bPublic,
  publicKeyObject,
  type TpmPublic,
} from '../../src/tpm/structures/public.js'
import { TpmVerifyError, verifyCertify, verifyQuote } from '../../src/tpm/verify.js'
import { recordedPublics } from '../fixtures/tpm-publics.js'
import { run } from '../helpers/exec.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const RSA_EK = '0x81010001'
const ECC_EK = '0x81010016'
const SHA256 = 0x000b

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-xcheck-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * tpm2-tools against one simulator. swtpm has no resource manager, so every command that loads
 * objects or sessions is followed by a flush (unless a policy session must survive it).
 */
function tools(tcti: string, dir: string) {
  const env = { ...process.env, TPM2TOOLS_TCTI: tcti }
  const f = (name: string) => join(dir, name)
  async function tool(cmd: string, args: string[], opts: { flush?: boolean } = {}) {
    const r = await run(cmd, args, { env })
    assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`)
    if (opts.flush !== false) await flush()
    return r
  }
  async function flush() {
    for (const kind of ['-t', '-s']) {
      const r = await run('tpm2_flushcontext', [kind], { env })
      assert.equal(r.code, 0, r.stderr)
    }
  }
  return { env, f, tool, flush }
}

type Tools = ReturnType<typeof tools>

interface Ak {
  readonly ctx: string
  readonly pub: TpmPublic
  readonly name: Uint8Array
  readonly pem: string
}

async function createAk(t: Tools, ek: string, alg: 'ecc' | 'rsa', tag: string): Promise<Ak> {
  const ctx = t.f(`${tag}.ctx`)
  await t.tool('tpm2_createak', [
    '-C',
    ek,
    '-G',
    alg,
    '-g',
    'sha256',
    '-s',
    alg === 'ecc' ? 'ecdsa' : 'rsassa',
    '-c',
    ctx,
    '-u',
    t.f(`${tag}.pub`),
    '-n',
    t.f(`${tag}.name`),
  ])
  const pem = t.f(`${tag}.pem`)
  await t.tool('tpm2_readpublic', ['-c', ctx, '-f', 'pem', '-o', pem])
  const pub = parseTpm2bPublic(readFileSync(t.f(`${tag}.pub`)))
  const name = new Uint8Array(readFileSync(t.f(`${tag}.name`)))
  assert.equal(hex(objectName(pub)), hex(name), 'our Name equals the Name tpm2_createak wrote')
  return { ctx, pub, name, pem }
}

async function readEk(t: Tools, handle: string): Promise<TpmPublic> {
  const out = t.f(`ek-${handle}.pub`)
  await t.tool('tpm2_readpublic', ['-c', handle, '-o', out])
  return parseTpm2bPublic(readFileSync(out))
}

// The TCG EK profile's high-range (SHA-384) EK policy is PolicyOR(PolicyA, PolicyC): PolicyA is
// PolicySecret(TPM_RH_ENDORSEMENT), PolicyC the PolicyAuthorizeNV branch (its published digest).
const POLICY_C_SHA384 =
  'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165'

function policyDigest(hash: string, size: number, cc: number, ...parts: Buffer[]): Buffer {
  const code = Buffer.alloc(4)
  code.writeUInt32BE(cc)
  return createHash(hash)
    .update(Buffer.alloc(size))
    .update(code)
    .update(Buffer.concat(parts))
    .digest()
}

/** tpm2_activatecredential with the EK's policy satisfied in a policy session. */
async function activate(t: Tools, ek: TpmPublic, ekHandle: string, ak: Ak, credFile: string) {
  const session = t.f('session.ctx')
  const out = t.f('activated.bin')
  rmSync(out, { force: true })
  if (ek.nameAlg === SHA256) {
    await t.tool('tpm2_startauthsession', ['--policy-session', '-S', session], { flush: false })
    await t.tool('tpm2_policysecret', ['-S', session, '-c', 'e'], { flush: false })
  } else {
    const endorsement = Buffer.from('4000000b', 'hex')
    const a = createHash('sha384')
      .update(policyDigest('sha384', 48, 0x151, endorsement))
      .digest()
    const c = Buffer.from(POLICY_C_SHA384, 'hex')
    assert.equal(hex(policyDigest('sha384', 48, 0x171, a, c)), hex(ek.authPolicy), 'EK policy')
    writeFileSync(t.f('policyA.bin'), a)
    writeFileSync(t.f('policyC.bin'), c)
    await t.tool('tpm2_startauthsession', ['--policy-session', '-g', 'sha384', '-S', session], {
      flush: false,
    })
    await t.tool('tpm2_policysecret', ['-S', session, '-c', 'e'], { flush: false })
    const list = `sha384:${t.f('policyA.bin')},${t.f('policyC.bin')}`
    await t.tool('tpm2_policyor', ['-S', session, '-l', list], { flush: false })
  }
  const r = await run(
    'tpm2_activatecredential',
    ['-c', ak.ctx, '-C', ekHandle, '-i', credFile, '-o', out, '-P', `session:${session}`],
    { env: t.env },
  )
  await run('tpm2_flushcontext', [session], { env: t.env })
  await t.flush()
  return r.code === 0 ? new Uint8Array(readFileSync(out)) : undefined
}

for (const [label, ekHandle] of [
  ['RSA-2048', RSA_EK],
  ['ECC P-384', ECC_EK],
] as const) {
  test(`our MakeCredential for the ${label} EK activates in tpm2_activatecredential`, async (t) => {
    const dir = tempDir(t)
    await using sim = await startSwtpm()
    const tp = tools(sim.tcti, dir)
    const ek = await readEk(tp, ekHandle)
    const aks = [
      await createAk(tp, ekHandle, 'ecc', 'ak-ecc'),
      await createAk(tp, ekHandle, 'rsa', 'ak-rsa'),
    ]
    for (const ak of aks) {
      const secret = new Uint8Array(randomBytes(32))
      const credFile = join(dir, 'cred.bin')
      writeFileSync(credFile, encodeCredentialFile(makeCredential(ek, ak.name, secret)))
      assert.equal(
        hex((await activate(tp, ek, ekHandle, ak, credFile)) ?? new Uint8Array()),
        hex(secret),
      )
    }
    // Bound to the ECC AK's Name, it does not activate with the RSA AK loaded instead.
    const credFile = join(dir, 'wrong.bin')
    writeFileSync(
      credFile,
      encodeCredentialFile(makeCredential(ek, aks[0]!.name, new Uint8Array(16))),
    )
    assert.equal(await activate(tp, ek, ekHandle, aks[1]!, credFile), undefined)
  })
}

test('tpm2_makecredential -T none output reads with our credential file codec', async (t) => {
  const dir = tempDir(t)
  for (const [label, size] of [
    ['rsa-2048', 32],
    ['ecc-p384', 48],
  ] as const) {
    const rec = recordedPublics[label]!
    writeFileSync(join(dir, 'ek.pub'), Buffer.from(rec.tpm2bPublic, 'hex'))
    writeFileSync(join(dir, 'secret.bin'), randomBytes(size))
    const out = join(dir, `${label}.cred`)
    const r = await run('tpm2_makecredential', [
      '-T',
      'none',
      '-e',
      join(dir, 'ek.pub'),
      '-s',
      join(dir, 'secret.bin'),
      '-n',
      rec.name,
      '-o',
      out,
    ])
    assert.equal(r.code, 0, r.stderr)
    const file = new Uint8Array(readFileSync(out))
    const theirs = decodeCredentialFile(file)
    assert.deepEqual(encodeCredentialFile(theirs), file, 'the codec is lossless')
    // Same shapes as ours for the same EK and secret size.
    const ours = makeCredential(
      parseTpm2bPublic(Buffer.from(rec.tpm2bPublic, 'hex')),
      Buffer.from(rec.name, 'hex'),
      new Uint8Array(size),
    )
    assert.equal(theirs.credentialBlob.length, ours.credentialBlob.length)
    assert.equal(theirs.encryptedSecret.length, ours.encryptedSecret.length)
    assert.equal(parseIdObject(theirs.credentialBlob).integrityHmac.length, size)
  }
})

function reasonOf(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (err instanceof TpmVerifyError) return err.reason
    return (err as { code?: string }).code ?? String(err)
  }
  return 'no error'
}

interface Quote {
  readonly message: Uint8Array
  readonly signature: Uint8Array
  readonly pcrs: Uint8Array
  readonly files: { message: string; signature: string; pcrs: string }
}

async function quote(tp: Tools, keyCtx: string, nonce: Uint8Array, tag: string): Promise<Quote> {
  const files = {
    message: tp.f(`${tag}.msg`),
    signature: tp.f(`${tag}.sig`),
    pcrs: tp.f(`${tag}.pcrs`),
  }
  await tp.tool('tpm2_quote', [
    '-c',
    keyCtx,
    '-l',
    'sha256:0,1,7',
    '-q',
    hex(nonce),
    '-m',
    files.message,
    '-s',
    files.signature,
    '-g',
    'sha256',
  ])
  await tp.tool('tpm2_pcrread', ['sha256:0,1,7', '-o', files.pcrs])
  return {
    message: new Uint8Array(readFileSync(files.message)),
    signature: new Uint8Array(readFileSync(files.signature)),
    pcrs: new Uint8Array(readFileSync(files.pcrs)),
    files,
  }
}

test('tpm2_quote by ECC and RSA AKs verifies; each tampering gives its reason', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const tp = tools(sim.tcti, dir)
  // Non-zero PCR 7, so a wrong value is not just another zero.
  await tp.tool('tpm2_pcrextend', [`7:sha256=${hex(randomBytes(32))}`])
  const sel = parsePcrSpec('sha256:0,1,7')
  for (const alg of ['ecc', 'rsa'] as const) {
    const ak = await createAk(tp, RSA_EK, alg, `ak-${alg}`)
    const nonce = new Uint8Array(randomBytes(32))
    const q = await quote(tp, ak.ctx, nonce, `quote-${alg}`)
    const good = {
      akPublic: ak.pub,
      message: q.message,
      signature: q.signature,
      nonce,
      pcrValues: pcrValuesFromConcatenated(sel, q.pcrs),
      requiredPcrs: sel,
    }
    const v = verifyQuote(good)
    assert.equal(v.signature.sigAlg, alg === 'ecc' ? 0x0018 : 0x0014)
    assert.deepEqual(v.pcrSelect, sel)
    const message = Uint8Array.from(q.message)
    message[message.length - 40]! ^= 0x01
    assert.equal(
      reasonOf(() => verifyQuote({ ...good, message })),
      'signature',
      alg,
    )
    const signature = Uint8Array.from(q.signature)
    signature[signature.length - 1]! ^= 0x80
    assert.equal(
      reasonOf(() => verifyQuote({ ...good, signature })),
      'signature',
      alg,
    )
    const otherNonce = Uint8Array.from(nonce, (b, i) => (i === 0 ? b ^ 1 : b))
    assert.equal(
      reasonOf(() => verifyQuote({ ...good, nonce: otherNonce })),
      'nonce',
      alg,
    )
    const pcrs = Uint8Array.from(q.pcrs)
    pcrs[70]! ^= 0x01
    const pcrValues = pcrValuesFromConcatenated(sel, pcrs)
    assert.equal(
      reasonOf(() => verifyQuote({ ...good, pcrValues })),
      'pcr_digest',
      alg,
    )
    const requiredPcrs = parsePcrSpec('sha256:0,1,7,10')
    assert.equal(
      reasonOf(() => verifyQuote({ ...good, requiredPcrs })),
      'pcr_selection',
      alg,
    )
  }
})

test('a quote by a non-restricted signing key fails the AK attribute check', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const tp = tools(sim.tcti, dir)
  const key = await loadOrdinaryKey(tp, 'key')
  const nonce = new Uint8Array(randomBytes(16))
  const q = await quote(tp, key.ctx, nonce, 'quote')
  const input = { akPublic: key.pub, message: q.message, signature: q.signature, nonce }
  assert.equal(
    reasonOf(() => verifyQuote(input)),
    'ak_attributes',
  )
  // The signature itself is good: only the key's attributes disqualify it.
  verifyQuote({ ...input, akPublic: publicKeyObject(key.pub) })
})

/** A primary in the owner hierarchy and an unrestricted ECC signing key under it, loaded. */
async function loadOrdinaryKey(tp: Tools, tag: string): Promise<{ ctx: string; pub: TpmPublic }> {
  const primary = tp.f(`${tag}-primary.ctx`)
  await tp.tool('tpm2_createprimary', ['-C', 'o', '-g', 'sha256', '-G', 'ecc', '-c', primary])
  const pubFile = tp.f(`${tag}.pub`)
  const privFile = tp.f(`${tag}.priv`)
  await tp.tool('tpm2_create', ['-C', primary, '-G', 'ecc', '-u', pubFile, '-r', privFile])
  const ctx = tp.f(`${tag}.ctx`)
  await tp.tool('tpm2_load', ['-C', primary, '-u', pubFile, '-r', privFile, '-c', ctx])
  return { ctx, pub: parseTpm2bPublic(readFileSync(pubFile)) }
}

test('tpm2_certify by the AK verifies; another key or nonce is rejected', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const tp = tools(sim.tcti, dir)
  const ak = await createAk(tp, RSA_EK, 'ecc', 'ak')
  const key = await loadOrdinaryKey(tp, 'key')
  const other = await loadOrdinaryKey(tp, 'other')
  await tp.tool('tpm2_certify', [
    '-c',
    key.ctx,
    '-C',
    ak.ctx,
    '-g',
    'sha256',
    '-o',
    tp.f('attest.bin'),
    '-s',
    tp.f('sig.bin'),
  ])
  const input = {
    akPublic: ak.pub,
    message: new Uint8Array(readFileSync(tp.f('attest.bin'))),
    signature: new Uint8Array(readFileSync(tp.f('sig.bin'))),
    // tpm2-tools 5.4 has no qualifying-data option for certify; it always sends 00ff55aa.
    nonce: new Uint8Array(Buffer.from('00ff55aa', 'hex')),
    certifiedPublic: key.pub,
  }
  const c = verifyCertify(input)
  assert.equal(hex(c.name), hex(objectName(key.pub)))
  assert.equal(
    reasonOf(() => verifyCertify({ ...input, certifiedPublic: other.pub })),
    'name',
  )
  assert.equal(
    reasonOf(() => verifyCertify({ ...input, nonce: new Uint8Array(4) })),
    'nonce',
  )
  // A certification is not a quote.
  assert.equal(
    reasonOf(() => verifyQuote(input)),
    'type',
  )
})

test('tpm check-quote verifies a tpm2_quote from files and rejects a wrong nonce', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const tp = tools(sim.tcti, dir)
  const ak = await createAk(tp, RSA_EK, 'ecc', 'ak')
  const nonce = new Uint8Array(randomBytes(20))
  const q = await quote(tp, ak.ctx, nonce, 'quote')
  const root: Group = { kind: 'group', name: 'tpm', summary: '', children: [checkQuoteCommand] }
  const invoke = async (args: string[]) => {
    const out: string[] = []
    const err: string[] = []
    const io = { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env: {} }
    const code = await runCli(root, ['check-quote', ...args], io)
    return { code, out: out.join(''), err: err.join('') }
  }
  const base = ['--ak', ak.pem, '--message', q.files.message, '--signature', q.files.signature]
  const text = await invoke([...base, '--nonce', hex(nonce), '--pcrs', q.files.pcrs])
  assert.equal(text.code, 0, text.err)
  assert.equal(text.out.trim().split('\n').length, 1)
  assert.match(text.out, /sha256:0,1,7/)
  const json = await invoke([
    ...base,
    '--nonce',
    hex(nonce),
    '--pcrs',
    q.files.pcrs,
    '--require',
    'sha256:0,7',
    '--json',
  ])
  assert.equal(json.code, 0, json.err)
  const report = JSON.parse(json.out) as Record<string, unknown>
  assert.equal(report.ok, true)
  assert.equal(report.pcr_values_checked, true)
  assert.equal(report.pcr_selection, 'sha256:0,1,7')
  const wrong = await invoke([...base, '--nonce', hex(new Uint8Array(20)), '--json'])
  assert.equal(wrong.code, 1)
  assert.equal(JSON.parse(wrong.err).error.code, 'ERR_TPM_VERIFY')
  assert.equal(JSON.parse(wrong.err).error.reason, 'nonce')
  const bad = Uint8Array.from(q.pcrs)
  bad[0]! ^= 1
  writeFileSync(tp.f('bad.pcrs'), bad)
  const tampered = await invoke([...base, '--nonce', hex(nonce), '--pcrs', tp.f('bad.pcrs')])
  assert.equal(tampered.code, 1)
  assert.match(tampered.err, /error\[ERR_TPM_VERIFY\]/)
  const outside = await invoke([...base, '--nonce', hex(nonce), '--require', 'sha256:8', '--json'])
  assert.equal(JSON.parse(outside.err).error.reason, 'pcr_selection')
  const usage = await invoke(['--message', q.files.message])
  assert.equal(usage.code, 2)
})
