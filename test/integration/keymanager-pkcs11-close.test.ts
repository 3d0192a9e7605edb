/**
 * A PKCS#11 key manager closed, or its process exiting, while a signMany job runs on a signing
 * thread: the thread may be inside C_Sign, and finalizing the module under it crashed the process
 * (SIGSEGV in SoftHSM2). Each case runs in a child process (a crash is its exit signal) against a
 * real SoftHSM2 token, a few times since the crash needs the finalize to land mid-signature.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { initSoftHsm, type SoftHsmToken } from '../../hardware-sim/softhsm.js'

const stateDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-km-p11-close-'))
let token: SoftHsmToken

before(async () => {
  token = await initSoftHsm({ stateDir, label: 'km-close' })
})
after(() => rmSync(stateDir, { recursive: true, force: true }))

const manager = new URL('../../src/keymanager/pkcs11/manager.js', import.meta.url).href

/** In a child: a 1024-message RSA job, then close() (or process.exit) `delay` ms into it. */
function child(how: 'close' | 'exit', delay: number, prefix: string) {
  const code = `
    import { Pkcs11KeyManager } from ${JSON.stringify(manager)}
    const km = await Pkcs11KeyManager.open({
      modulePath: ${JSON.stringify(token.modulePath)}, token: { label: ${JSON.stringify(token.tokenLabel)} },
      pin: ${JSON.stringify(token.pin)}, keyLabelPrefix: ${JSON.stringify(prefix)},
    })
    const key = (await km.getKey('k')) ?? (await km.generateKey('k', 'rsa-2048'))
    const job = key.signMany(Array.from({ length: 1024 }, (_, i) => Buffer.from('m' + i)))
    await new Promise((r) => setTimeout(r, ${delay}))
    if (${JSON.stringify(how)} === 'exit') process.exit(0)
    km.close()
    const out = await job.then(() => 'signed', (e) => 'refused ' + e.code)
    // The module must still be usable by a new manager after the old one let go of it.
    await new Promise((r) => setTimeout(r, 100))
    const again = await Pkcs11KeyManager.open({
      modulePath: ${JSON.stringify(token.modulePath)}, token: { label: ${JSON.stringify(token.tokenLabel)} },
      pin: ${JSON.stringify(token.pin)}, keyLabelPrefix: ${JSON.stringify(prefix)},
    })
    const sig = await (await again.getKey('k')).sign(Buffer.from('after'))
    again.close()
    console.log(out, sig.length)
  `
  // A file, not -e: the signing threads inherit the child's exec arguments.
  const file = join(stateDir, `${how}-${delay}.mjs`)
  writeFileSync(file, code)
  return spawnSync(process.execPath, [file], {
    env: { ...process.env, ...token.env },
    encoding: 'utf8',
    timeout: 60_000,
  })
}

test('pkcs11: close() while a signMany job is on a signing thread refuses the job and does not crash the process', () => {
  for (const delay of [30, 60, 90, 120, 150, 200]) {
    const r = child('close', delay, 'close')
    assert.equal(r.signal, null, `child died of ${r.signal} (close ${delay} ms into the job)`)
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /^refused ERR_PKCS11 256\n$/)
  }
})

test('pkcs11: process.exit while a signMany job is on a signing thread exits cleanly', () => {
  for (const delay of [30, 60, 90, 120, 150, 200]) {
    const r = child('exit', delay, 'exit')
    assert.equal(r.signal, null, `child died of ${r.signal} (exit ${delay} ms into the job)`)
    assert.equal(r.status, 0, r.stderr)
  }
})
