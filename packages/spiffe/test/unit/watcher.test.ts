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
    { initialMs: 10, maxMs: 30 },
  )
  w.start()
  await new Promise((r) => setTimeout(r, 1000))
  w.close()
  const count = opened.length
  await new Promise((r) => setTimeout(r, 200))
  assert.equal(opened.length, count, 'no attempt after close')
  const gaps = opened.slice(1).map((t, i) => t - opened[i]!)
  // Timers fire late on a loaded machine, never early: the lower bounds are exact (±20% jitter).
  assert.ok(gaps[0]! >= 7, `first gap ${gaps[0]}`)
  assert.ok(gaps[1]! >= 15, `second gap ${gaps[1]}`)
  assert.ok(
    gaps.slice(2).every((g) => g >= 23),
    gaps.join(),
  )
  // Capped at 30 ms, a second holds ~30 attempts; doubling without a cap would allow 7.
  assert.ok(count >= 12, `${count} attempts in 1 s`)
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
