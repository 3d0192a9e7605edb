/**
 * The TPM addon's errors, produced for real against swtpm, arrive as SpiffeEdgeError subclasses
 * (test/unit/native-errors.test.ts checks the full list against the C++ source).
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import { loadNative } from '../../src/native/load.js'
import { TpmContext } from '../../src/tpm/context.js'
import {
  fromNative,
  TpmArgumentError,
  TpmBusyError,
  TpmClosedError,
  TpmStructureError,
} from '../../src/tpm/errors.js'
import { createSigningKey, openSrk } from '../../src/tpm/keys.js'

function caught(f: () => unknown): unknown {
  try {
    f()
  } catch (e) {
    return fromNative(e)
  }
  assert.fail('expected a throw')
}

test('a key blob whose private part does not unmarshal is TpmStructureError, and nothing leaks', async () => {
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  await using srk = await openSrk(tpm)
  const blob = await createSigningKey(tpm, srk)
  const before = await tpm.loadedTransientCount()
  // TPM2B_PRIVATE claiming 200 bytes but carrying 2: the addon refuses it before the TPM sees it.
  const junk = Uint8Array.from([0x00, 0xc8, 0x01, 0x02])
  await assert.rejects(
    tpm.loadKey(srk, { private: junk, public: blob.public }),
    (e: unknown) => e instanceof TpmStructureError && e.code === 'ERR_TPM_STRUCTURE' && !!e.remedy,
  )
  assert.equal(await tpm.loadedTransientCount(), before)
  await using key = await tpm.loadKey(srk, blob)
  assert.ok(key.handle > 0, 'the context is still usable')
})

test('the raw context: busy, closed and argument errors map to their classes', async () => {
  await using sim = await startSwtpm()
  const ctx = await loadNative().openContext(sim.tcti)
  const inFlight = ctx.getRandom(8)
  const busy = caught(() => ctx.getRandom(8))
  assert.ok(busy instanceof TpmBusyError && busy.code === 'ERR_TPM_BUSY' && !!busy.remedy)
  const busyClose = caught(() => ctx.close())
  assert.ok(busyClose instanceof TpmBusyError)
  assert.equal((await inFlight).length, 8)
  const range = caught(() => ctx.getRandom(65))
  assert.ok(range instanceof TpmArgumentError && range.kind === 'RangeError')
  assert.equal(range.code, 'ERR_TPM_ARGUMENT')
  const type = caught(() => ctx.getRandom('8' as unknown as number))
  assert.ok(type instanceof TpmArgumentError && type.kind === 'TypeError')
  ctx.close()
  const closed = caught(() => ctx.getRandom(8))
  assert.ok(closed instanceof TpmClosedError && closed.code === 'ERR_TPM_CLOSED')
  assert.ok(closed instanceof SpiffeEdgeError && !!closed.remedy)
})
