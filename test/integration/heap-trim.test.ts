import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { trimHeapAfterNextGc } from '../../src/agent/heap-trim.js'
import { loadPeerCred } from '../../src/native/peercred.js'

test('the peercred addon trims the malloc heap (glibc)', () => {
  const b = loadPeerCred()
  assert.equal(b.abiVersion, 3)
  assert.equal(typeof b.trimHeap, 'function')
  // After a burst freed, glibc has whole pages to give back.
  let keep: Buffer[] | undefined = Array.from({ length: 2000 }, () => Buffer.allocUnsafeSlow(4096))
  keep.length = 0
  keep = undefined
  assert.equal(typeof b.trimHeap!(), 'boolean')
})

test('trimHeapAfterNextGc trims once after a full collection and coalesces calls', async () => {
  const b = loadPeerCred()
  let calls = 0
  const real = b.trimHeap!
  // The cached binding is the one heap-trim.ts uses: count its calls.
  ;(b as { trimHeap?: () => boolean }).trimHeap = () => {
    calls++
    return real()
  }
  try {
    trimHeapAfterNextGc()
    trimHeapAfterNextGc()
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(calls, 0, 'not before a full collection')
    // A full collection, as V8 runs on its own (gc() made available without --expose-gc).
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    // Node hands GC entries to observers when the event loop next wakes: two timers.
    const turns = async () => {
      for (let i = 0; i < 2; i++) await new Promise((r) => setTimeout(r, 30))
    }
    gc()
    await turns()
    assert.equal(calls, 1)
    gc()
    await turns()
    assert.equal(calls, 1, 'once per arming')
  } finally {
    ;(b as { trimHeap?: () => boolean }).trimHeap = real
  }
})
