/**
 * The TPM sealer on real swtpm: the sealed SVID cache opens again after the TPM restarts (a
 * reboot), and the data dir copied next to another TPM does not open: it is discarded with a log
 * line, not used.
 */
import assert from 'node:assert/strict'
import { cpSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { CACHE_FILE, SealedSvidStore } from '../../src/agent/cache/sealed-svids.js'
import type { Log } from '../../src/common/log.js'
import { TpmSealer } from '../../src/keymanager/tpm-sealer.js'
import { TpmContext } from '../../src/tpm/context.js'
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
