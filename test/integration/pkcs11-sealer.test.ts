/**
 * The PKCS#11 cache sealer on a real SoftHSM2 token: the sealed SVID cache opens again with a
 * fresh manager (a restart); copied next to another token it does not open; with its token key
 * deleted behind our back it is refused (and a new cache is sealed with a new key).
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { cpSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import pkcs11js from 'pkcs11js'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { CACHE_FILE, SealedSvidStore } from '../../src/agent/cache/sealed-svids.js'
import type { Log } from '../../src/common/log.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import { PKCS11_KEK_ID, Pkcs11Sealer } from '../../src/keymanager/pkcs11-sealer.js'
import { AGENT, collect, fixture, td } from '../helpers/svid-fixture.js'

test('PKCS#11-sealed SVID cache: reopens after a restart, not with another token, not after its key is deleted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-p11-'))
  const copy = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-p11-copy-'))
  t.after(() => {
    for (const d of [dir, copy]) rmSync(d, { recursive: true, force: true })
  })
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'seal-a' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  // A second token in the same SoftHSM2 store: "another machine's HSM".
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', 'seal-b', '--pin', token.pin, '--so-pin', token.soPin],
    { env: { ...process.env, SOFTHSM2_CONF: token.env.SOFTHSM2_CONF } },
  )
  const open = (label: string) =>
    Pkcs11KeyManager.open({
      modulePath: token.modulePath,
      token: { label },
      pin: token.pin,
      keyLabelPrefix: 'agent',
    })
  const withStore = async <T>(
    label: string,
    d: string,
    log: Log,
    fn: (s: SealedSvidStore) => Promise<T>,
  ) => {
    const km = await open(label)
    try {
      const s = await SealedSvidStore.open({
        dataDir: d,
        sealer: new Pkcs11Sealer(km),
        trustDomain: td,
        log,
      })
      return await fn(s)
    } finally {
      km.close()
    }
  }
  const { svids, bundle } = await fixture(2)
  await withStore('seal-a', dir, collect().log, (s) => s.save(AGENT, svids))

  // The KEK's key is a sensitive, non-extractable token object: its value cannot be read.
  const km = await open('seal-a')
  await km.inSession('test', (p, s) => {
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: km.labelOf(PKCS11_KEK_ID) }])
    const [h] = p.C_FindObjects(s, 2)
    p.C_FindObjectsFinal(s)
    assert.ok(h, 'no cache key in the token')
    assert.throws(() => p.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_VALUE }]))
  })
  km.close()

  // A restart: a new manager on the same token opens the same records.
  const back = await withStore('seal-a', dir, collect().log, (s) =>
    s.load(AGENT, bundle, Date.now()),
  )
  assert.deepEqual(
    back.map((r) => Buffer.from(r.privateKey).toString('hex')),
    svids.map((r) => Buffer.from(r.privateKey).toString('hex')),
  )

  // The data dir copied next to another token: refused and discarded, with a log line.
  cpSync(dir, copy, { recursive: true })
  const c = collect()
  const got = await withStore('seal-b', copy, c.log, (s) => s.load(AGENT, bundle, Date.now()))
  assert.deepEqual(got, [])
  const line = c.lines.find((l) => /discarded/.test(l.msg))
  assert.ok(line, 'no log line saying the cache was discarded')
  assert.equal(line.fields?.code, 'ERR_CACHE_SEAL')
  assert.throws(() => statSync(join(copy, CACHE_FILE)), /ENOENT/)

  // The key deleted behind our back: the cache is refused, then a new one seals with a new key.
  const del = await open('seal-a')
  await del.inSession('test', (p, s) => {
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: del.labelOf(PKCS11_KEK_ID) }])
    const hs = p.C_FindObjects(s, 4)
    p.C_FindObjectsFinal(s)
    for (const h of hs) p.C_DestroyObject(s, h)
  })
  del.close()
  const c2 = collect()
  const after = await withStore('seal-a', dir, c2.log, async (s) => {
    const g = await s.load(AGENT, bundle, Date.now())
    await s.save(AGENT, svids)
    return g
  })
  assert.deepEqual(after, [])
  assert.equal(c2.lines.find((l) => /discarded/.test(l.msg))?.fields?.code, 'ERR_CACHE_SEAL')
  const reopened = await withStore('seal-a', dir, collect().log, (s) =>
    s.load(AGENT, bundle, Date.now()),
  )
  assert.equal(reopened.length, svids.length, 'the re-sealed cache does not open')
})
