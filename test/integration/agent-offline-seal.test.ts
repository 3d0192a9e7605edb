/**
 * The TPM sealer on real swtpm: the sealed SVID cache opens again after the TPM restarts (a
 * reboot), and the data dir copied next to another TPM does not open: it is discarded with a log
 * line, not used.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { CACHE_FILE, SealedSvidStore } from '../../src/agent/cache/sealed-svids.js'
import type { Log } from '../../src/common/log.js'
import { loadUnderSrk, withTpm } from '../../src/keymanager/tpm.js'
import { TpmPcrSealer } from '../../src/keymanager/tpm-pcr-sealer.js'
import { TpmSealer } from '../../src/keymanager/tpm-sealer.js'
import { TPM_ALG } from '../../src/tpm/constants.js'
import { TpmContext } from '../../src/tpm/context.js'
import { pcrValuesDigest } from '../../src/tpm/policy.js'
import { AGENT, collect, fixture, td } from '../helpers/svid-fixture.js'

async function withStore<T>(
  tcti: string,
  dir: string,
  log: Log,
  fn: (s: SealedSvidStore) => Promise<T>,
) {
  const tpm = await TpmContext.open(tcti)
  try {
    const s = await SealedSvidStore.open({
      dataDir: dir,
      sealer: new TpmSealer(tpm, join(dir, 'cache-seal')),
      trustDomain: td,
      log,
    })
    return await fn(s)
  } finally {
    await tpm.close()
  }
}

test('TPM-sealed SVID cache: opens after a TPM restart, not next to another TPM; no transient left loaded', async (t) => {
  const stateA = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-tpm-a-'))
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-dir-'))
  const copy = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-copy-'))
  let a = await startSwtpm({ stateDir: stateA })
  await using b = await startSwtpm()
  t.after(async () => {
    await a.stop()
    for (const d of [stateA, dir, copy]) rmSync(d, { recursive: true, force: true })
  })
  const { svids, bundle } = await fixture(3)
  await withStore(a.tcti, dir, collect().log, async (s) => {
    assert.equal(s.path, join(dir, CACHE_FILE))
    await s.save(AGENT, svids)
  })
  assert.equal(statSync(join(dir, 'cache-seal', 'cache-kek.tpmkey')).mode & 0o777, 0o600)

  // A reboot: swtpm stops and starts on the same state; the cache opens with the same records.
  const port = a.port
  await a.stop()
  a = await startSwtpm({ stateDir: stateA, port })
  const back = await withStore(a.tcti, dir, collect().log, async (s) => {
    const got = await s.load(AGENT, bundle, Date.now())
    const tpm = await TpmContext.open(a.tcti)
    try {
      assert.equal(await tpm.loadedTransientCount(), 0, 'a transient object was left loaded')
    } finally {
      await tpm.close()
    }
    return got
  })
  assert.deepEqual(
    back.map((r) => Buffer.from(r.privateKey).toString('hex')),
    svids.map((r) => Buffer.from(r.privateKey).toString('hex')),
  )

  // The whole data dir copied to a machine with another TPM: the key blob does not load there.
  cpSync(dir, copy, { recursive: true })
  const c = collect()
  const got = await withStore(b.tcti, copy, c.log, (s) => s.load(AGENT, bundle, Date.now()))
  assert.deepEqual(got, [])
  const line = c.lines.find((l) => /discarded/.test(l.msg))
  assert.ok(line, 'no log line saying the cache was discarded')
  assert.equal(line.fields?.code, 'ERR_CACHE_SEAL')
  assert.throws(() => statSync(join(copy, CACHE_FILE)), /ENOENT/)
})

test('PCR-bound cache key: the TPM itself refuses it after a PCR extend (policy session) and with the password; the policy-free key file is left as it was', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-pcr-'))
  await using sim = await startSwtpm()
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const { svids, bundle } = await fixture(1)
  // A cache first written without a PCR policy: its key must survive turning the policy on.
  await withStore(sim.tcti, dir, collect().log, (s) => s.save(AGENT, svids))
  const plainKey = readFileSync(join(dir, 'cache-seal', 'cache-kek.tpmkey'))

  const tpm = await TpmContext.open(sim.tcti)
  try {
    const sealer = new TpmPcrSealer(tpm, join(dir, 'cache-seal'), [7, 0])
    const dek = new Uint8Array(32).fill(7)
    const wrapped = await sealer.wrap(dek)
    assert.deepEqual(await sealer.unwrap(wrapped), dek)
    const [file] = readdirSync(join(dir, 'cache-seal')).filter((n) =>
      n.startsWith('cache-kek-pcr-'),
    )
    const j = JSON.parse(readFileSync(join(dir, 'cache-seal', file!), 'utf8'))
    const blob = {
      private: Buffer.from(j.private, 'base64'),
      public: Buffer.from(j.public, 'base64'),
    }
    const digest = new Uint8Array(32)
    // userWithAuth is clear: the empty password does not authorize the key.
    await assert.rejects(
      withTpm(tpm, async () => {
        await using k = await loadUnderSrk(tpm, blob)
        return await tpm.sign(k, digest)
      }),
      /TPM|auth/i,
    )
    // PCR 7 measured something else: the TPM refuses PolicyPCR with the old values' digest, and a
    // session over the current values does not satisfy the key's authPolicy.
    const sel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 7] }]
    const signUnderPcrs = (v: typeof values) =>
      withTpm(tpm, async () => {
        await using k = await loadUnderSrk(tpm, blob)
        return await tpm.signWithPcrPolicy(k, digest, sel, pcrValuesDigest(TPM_ALG.SHA256, sel, v))
      })
    const values = await tpm.pcrRead(sel)
    execFileSync('tpm2_pcrextend', ['-T', sim.tcti, `7:sha256=${'00'.repeat(31)}01`])
    await assert.rejects(signUnderPcrs(values), /TPM/)
    const now = await tpm.pcrRead(sel)
    await assert.rejects(signUnderPcrs(now), /TPM/)
    await assert.rejects(
      sealer.unwrap(wrapped),
      (e: { code?: string }) => e.code === 'ERR_CACHE_PCR_MISMATCH',
    )
    assert.equal(await tpm.loadedTransientCount(), 0, 'a transient object was left loaded')
  } finally {
    await tpm.close()
  }
  assert.deepEqual(readFileSync(join(dir, 'cache-seal', 'cache-kek.tpmkey')), plainKey)
  // The policy-free cache is still there and still opens with the policy-free sealer.
  const back = await withStore(sim.tcti, dir, collect().log, (s) =>
    s.load(AGENT, bundle, Date.now()),
  )
  assert.equal(back.length, 1)
})
