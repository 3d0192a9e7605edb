import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { loadNative } from '../../src/native/load.js'
import { TpmContext } from '../../src/tpm/context.js'
import { TpmError } from '../../src/tpm/errors.js'

test('the built addon loads and exposes the documented surface', () => {
  const native = loadNative()
  assert.equal(native.abiVersion, 3)
  assert.equal(typeof native.openContext, 'function')
  // peerCred lives in the peercred addon now (test/integration/peercred.test.ts).
  assert.equal((native as unknown as Record<string, unknown>).peerCred, undefined)
})

test('the addon loads and returns random bytes from a per-test swtpm', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const a = await tpm.getRandom(100)
  const b = await tpm.getRandom(100)
  assert.equal(a.length, 100)
  assert.equal(b.length, 100)
  assert.notDeepEqual(a, b)
  assert.ok(new Set(a).size > 10, 'bytes look random')
})

test('fixed properties report the swtpm vendor and firmware', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const p = await tpm.fixedProperties()
  assert.equal(p.manufacturer, 'IBM')
  assert.equal(p.specFamily, '2.0')
  assert.match(p.vendorString, /SW\s+TPM/)
  assert.ok(p.firmwareVersion1 > 0)
  assert.match(p.firmwareVersion, /^\d+\.\d+\.\d+\.\d+$/)
})

test('concurrent calls are queued on one context and the event loop keeps running', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  const results = await Promise.all(Array.from({ length: 20 }, () => tpm.getRandom(32)))
  clearInterval(timer)
  assert.equal(results.length, 20)
  for (const r of results) assert.equal(r.length, 32)
  assert.ok(ticks > 0, 'timers fired while TPM commands ran on the thread pool')
})

test('a closed context refuses calls with ERR_TPM_CLOSED', async () => {
  await using sim = await startSwtpm()
  const tpm = await TpmContext.open(sim.tcti)
  await tpm.close()
  await tpm.close() // idempotent
  await assert.rejects(tpm.getRandom(8), { code: 'ERR_TPM_CLOSED' })
})

test('an unreachable TCTI is a TpmError from the TCTI layer', async () => {
  const err = await TpmContext.open('swtpm:host=127.0.0.1,port=1').catch((e: unknown) => e)
  assert.ok(err instanceof TpmError)
  assert.equal(err.code, 'ERR_TPM')
  assert.equal(err.layer, 10)
  assert.equal(err.retryable, false)
  assert.ok(err.remedy)
})

test('reading a missing NV index is a TpmError, and the context stays usable', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await assert.rejects(tpm.nvReadAll(0x01c0ff00), (e: unknown) => e instanceof TpmError)
  assert.equal((await tpm.getRandom(4)).length, 4)
})
