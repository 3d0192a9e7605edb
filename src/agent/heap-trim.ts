/**
 * Gives the kernel back the native memory an issuing sync used. A sync of 1,000 SVIDs allocates
 * ~14 MiB in malloc at its peak (keys, CSRs, the batch replies, V8's compiler zones) and frees
 * nearly all of it, but glibc keeps the freed pages in its arenas for good: ~10 MiB of RSS stayed
 * with 1.5 MiB of it in use (malloc_stats, docs/benchmarks.md "Agent RSS"). malloc_trim(0) hands
 * whole free pages back. It runs after the next full collection rather than at once, because the
 * keys' native memory is freed only when V8 collects their KeyObjects; a timer covers a process
 * where no full collection comes.
 */
import { constants, PerformanceObserver } from 'node:perf_hooks'
import { loadPeerCred } from '../native/peercred.js'

/** The longest a trim waits for a full collection. */
const TRIM_FALLBACK_MS = 30_000

let trim: (() => boolean) | null | undefined
let armed: { obs: PerformanceObserver; timer: NodeJS.Timeout } | undefined

/** malloc_trim through the peercred addon; null where it has none (an older build, not glibc). */
function trimFn(): (() => boolean) | null {
  if (trim === undefined) {
    try {
      trim = loadPeerCred().trimHeap ?? null
    } catch {
      // Without the addon the Workload API refuses to start anyway; nothing to trim with here.
      trim = null
    }
  }
  return trim
}

/** Trims once after the next full collection (or TRIM_FALLBACK_MS); repeated calls coalesce. */
export function trimHeapAfterNextGc(): void {
  const t = trimFn()
  if (!t || armed) return
  const run = () => {
    if (!armed) return
    armed.obs.disconnect()
    clearTimeout(armed.timer)
    armed = undefined
    t()
  }
  const obs = new PerformanceObserver((list) => {
    const major = list
      .getEntries()
      .some(
        (e) =>
          (e as unknown as { detail?: { kind?: number } }).detail?.kind ===
          constants.NODE_PERFORMANCE_GC_MAJOR,
      )
    // Node delivers GC entries when the event loop next wakes, after the collection's weak
    // callbacks (which free the keys); one more turn for good measure.
    if (major) setImmediate(run)
  })
  obs.observe({ entryTypes: ['gc'] })
  armed = { obs, timer: setTimeout(run, TRIM_FALLBACK_MS).unref() }
}
