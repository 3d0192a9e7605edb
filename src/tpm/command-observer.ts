/**
 * A process-wide observer of TPM commands, for the agent's latency metrics. It is module state on
 * purpose: the connection is opened deep inside the attestor and key-manager plugins, and
 * threading a metrics object through each of them would put metrics code in every one. With no
 * observer set, `observed()` returns the context itself (no proxy, no cost).
 */
import type { NativeEsysContext } from '../native/types.js'

/** `command` is the ESAPI wrapper's method name (a closed set); `ok` false when it threw. */
export type TpmCommandObserver = (command: string, seconds: number, ok: boolean) => void

let observer: TpmCommandObserver | undefined

/** Sets (or with undefined, clears) the observer; returns the previous one. */
export function setTpmCommandObserver(
  o: TpmCommandObserver | undefined,
): TpmCommandObserver | undefined {
  const prev = observer
  observer = o
  return prev
}

/** The context, with each method call timed when an observer is set. */
export function observed(ctx: NativeEsysContext): NativeEsysContext {
  const o = observer
  if (!o) return ctx
  return new Proxy(ctx, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown
      if (typeof v !== 'function' || typeof prop !== 'string') return v
      return (...args: unknown[]) => {
        const started = process.hrtime.bigint()
        const done = (ok: boolean) => o(prop, Number(process.hrtime.bigint() - started) / 1e9, ok)
        let r: unknown
        try {
          r = (v as (...a: unknown[]) => unknown).apply(target, args)
        } catch (err) {
          done(false)
          throw err
        }
        if (r instanceof Promise) {
          return r.then(
            (x) => {
              done(true)
              return x
            },
            (err: unknown) => {
              done(false)
              throw err
            },
          )
        }
        done(true)
        return r
      }
    },
  })
}
