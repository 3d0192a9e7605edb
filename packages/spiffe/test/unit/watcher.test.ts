import assert from 'node:assert/strict'
import { test } from 'node:test'
import { StreamWatch } from '../../src/watcher.js'
import { GrpcStatus, type RawWorkloadClient, WorkloadApiError } from '../../src/workload/client.js'

/** A client whose every stream fails at once with `status`, recording when each was opened. */
function failingClient(status: number): { client: RawWorkloadClient; opened: number[] } {
  const opened: number[] = []
  const client = {
    address: { kind: 'unix', path: '/nowhere' },
    stream(_m: string, _on: unknown, onEnd: (e: WorkloadApiError) => void) {
      opened.push(performance.now())
      setImmediate(() => onEnd(new WorkloadApiError(status, 'down')))
      return { cancel() {} }
    },
    fetchJwtSvids: () => Promise.reject(new Error('unused')),
    validateJwtSvid: () => Promise.reject(new Error('unused')),
    close() {},
  } as RawWorkloadClient
  return { client, opened }
}

test('reconnects back off exponentially and stay under the cap', async () => {
  const { client, opened } = failingClient(GrpcStatus.UNAVAILABLE)
  const w = new StreamWatch(
    client,
    'FetchX509SVID',
    () => {},
    () => {},
    { initialMs: 10, maxMs: 80 },
  )
  w.start()
  await new Promise((r) => setTimeout(r, 900))
  w.close()
  const count = opened.length
  await new Promise((r) => setTimeout(r, 200))
  assert.equal(opened.length, count, 'no attempt after close')
  const gaps = opened.slice(1).map((t, i) => t - opened[i]!)
  assert.ok(gaps.length >= 6, `${gaps.length} retries`)
  // 10, 20, 40, 80, 80, ... ±20%: never below 8 ms, and the late ones near the cap, not growing.
  assert.ok(gaps[0]! >= 7, `first gap ${gaps[0]}`)
  assert.ok(
    gaps.slice(4).every((g) => g >= 60),
    gaps.join(),
  )
  // Timers on a loaded machine fire late, never early: a loose upper bound still shows the cap.
  assert.ok(
    gaps.slice(4).every((g) => g < 400),
    gaps.join(),
  )
})

test('InvalidArgument ends the watch at once and is reported as fatal', async () => {
  const { client, opened } = failingClient(GrpcStatus.INVALID_ARGUMENT)
  const reports: boolean[] = []
  const w = new StreamWatch(
    client,
    'FetchX509SVID',
    () => {},
    (_e, fatal) => reports.push(fatal),
  )
  w.start()
  await new Promise((r) => setTimeout(r, 300))
  assert.equal(opened.length, 1)
  assert.deepEqual(reports, [true])
})
