import assert from 'node:assert/strict'
import { verify } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { spawnService, waitForPort } from '../../hardware-sim/process.js'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { TpmKeyManager } from '../../src/keymanager/tpm.js'
import { TpmContext } from '../../src/tpm/context.js'
import { TpmError } from '../../src/tpm/errors.js'
import { openSrk } from '../../src/tpm/keys.js'

/** A swtpm whose state dir outlives its process, so it can be stopped and started again. */
async function restartableSim(t: { after: (fn: () => unknown) => void }) {
  const stateDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-restart-'))
  let sim = await startSwtpm({ stateDir })
  const port = sim.port
  t.after(async () => {
    await sim.stop()
    rmSync(stateDir, { recursive: true, force: true })
  })
  return {
    tcti: sim.tcti,
    stop: () => sim.stop(),
    async start() {
      sim = await startSwtpm({ stateDir, port })
    },
  }
}

const isTcti = (e: unknown) =>
  e instanceof TpmError && e.code === 'ERR_TPM' && e.layer === 10 && e.rc !== 0

test('a TPM key manager signs again after swtpm restarts under it; health follows the TPM', async (t) => {
  const sim = await restartableSim(t)
  const tpm = await TpmContext.open(sim.tcti, { reconnectMinMs: 50, reconnectMaxMs: 200 })
  t.after(() => tpm.close())
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpmkeys-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = new TpmKeyManager(tpm, dir)
  const key = await keys.generateKey('agent', 'ec-p256')
  const data = new TextEncoder().encode('hello')
  const check = (sig: Uint8Array) =>
    assert.ok(verify('sha256', data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig))
  check(await key.sign(data))
  assert.equal(keys.tpmHealth().healthy, true)

  await sim.stop()
  // While it is down: TPM errors (TCTI layer, with the rc), never a server-side code, and fast.
  await assert.rejects(key.sign(data), isTcti)
  const down = keys.tpmHealth()
  assert.equal(down.healthy, false)
  assert.equal(down.error?.code, 'ERR_TPM')
  assert.ok(down.downSince !== undefined && down.downSince <= Date.now())
  const t0 = Date.now()
  await assert.rejects(key.sign(data), isTcti)
  assert.ok(Date.now() - t0 < 2000, 'a dead TPM fails calls fast')
  assert.equal(keys.tpmHealth().healthy, false)

  await sim.start()
  await sleep(250) // past the backoff cap, so the next call reopens at once
  // The first sign after the restart works: the context reopens and the key reloads from its blob.
  check(await key.sign(data))
  const up = keys.tpmHealth()
  assert.equal(up.healthy, true)
  assert.equal(up.error, undefined)
  assert.ok(up.reconnects >= 1)
  // And a restored key (read back from its blob file) signs as well.
  check(await (await keys.getKey('agent'))!.sign(data))
})

test('a restart between calls (no call saw it go down) is repaired by the next sign', async (t) => {
  const sim = await restartableSim(t)
  const tpm = await TpmContext.open(sim.tcti, { reconnectMinMs: 50, reconnectMaxMs: 200 })
  t.after(() => tpm.close())
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpmkeys-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = new TpmKeyManager(tpm, dir)
  const key = await keys.generateKey('agent', 'ec-p256')
  const data = new TextEncoder().encode('x')
  await key.sign(data)
  await sim.stop()
  await sim.start()
  // The old TCTI connection is dead: the first command fails, the key manager retries once.
  const sig = await key.sign(data)
  assert.ok(verify('sha256', data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig))
  assert.equal(keys.tpmHealth().healthy, true)
})

test('handles from before a reconnect are refused, and disposing them does not throw', async (t) => {
  const sim = await restartableSim(t)
  const tpm = await TpmContext.open(sim.tcti, { reconnectMinMs: 50, reconnectMaxMs: 200 })
  t.after(() => tpm.close())
  const srk = await openSrk(tpm)
  await sim.stop()
  await assert.rejects(tpm.getRandom(4), isTcti)
  await sim.start()
  await sleep(250)
  assert.equal((await tpm.getRandom(4)).length, 4)
  await assert.rejects(tpm.sign(srk, new Uint8Array(32)), { code: 'ERR_TPM_CLOSED' })
  await srk.dispose()
  // Nothing of the old context leaked into the new one.
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test('a TPM that comes back without TPM2_Startup gets one, and signing works again', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-restart-'))
  t.after(() => rmSync(stateDir, { recursive: true, force: true }))
  const sim = await startSwtpm({ stateDir })
  const tpm = await TpmContext.open(sim.tcti, { reconnectMinMs: 50, reconnectMaxMs: 200 })
  t.after(() => tpm.close())
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpmkeys-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = new TpmKeyManager(tpm, dir)
  const key = await keys.generateKey('agent', 'ec-p256')
  const data = new TextEncoder().encode('y')
  await key.sign(data)
  await sim.stop()
  // The same TPM state, but a bare swtpm: no startup-clear, so every command is TPM_RC_INITIALIZE
  // until someone sends TPM2_Startup (as after a real power cycle without firmware doing it).
  const bare = spawnService({
    command: 'swtpm',
    args: [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${join(stateDir, 'tpm')}`,
      '--server',
      `type=tcp,port=${sim.port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${sim.port + 1},bindaddr=127.0.0.1`,
      '--flags',
      'not-need-init',
    ],
    logFile: join(stateDir, 'bare.log'),
    detached: false,
  })
  t.after(() => bare.stop())
  await waitForPort(sim.port, bare, 'swtpm', join(stateDir, 'bare.log'))
  const sig = await key.sign(data)
  assert.ok(verify('sha256', data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig))
  assert.equal(keys.tpmHealth().healthy, true)
})
