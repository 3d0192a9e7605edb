/**
 * Batch signing off the event loop: a few worker threads (sign-thread.ts), each signing a whole
 * list of messages per job with synchronous C_Sign calls. pkcs11js's C_SignAsync costs a libuv
 * work item, a thread wake-up and a promise per signature, which measured 300-480 µs of server
 * CPU per SVID against SoftHSM2's ~60-100 µs signature (docs/benchmarks.md); a job here costs
 * one message each way for the whole list. Each job runs in a session the caller borrowed from
 * the token's pool, so jobs run in parallel on up to `maxThreads` threads, like the sessions.
 * Failures come back shaped like pkcs11js errors (name Pkcs11Error, the CKR code), so the key
 * manager's recovery treats them as it treats its own.
 */
import { Worker } from 'node:worker_threads'
import type pkcs11js from 'pkcs11js'
import { Pkcs11KeyError } from './errors.js'
import type { SignAnswer, SignJob } from './sign-thread.js'

interface Pending {
  resolve(sigs: Uint8Array[]): void
  reject(err: Error): void
}

class SignThread {
  readonly pending = new Map<number, Pending>()
  readonly worker: Worker
  private readonly onGone: (t: SignThread) => void

  constructor(modulePath: string, onGone: (t: SignThread) => void) {
    this.onGone = onGone
    this.worker = new Worker(new URL('./sign-thread.js', import.meta.url), {
      workerData: { modulePath },
    })
    this.worker.unref() // an idle signing thread must not keep the process alive
    this.worker.on('message', (m: SignAnswer) => {
      const p = this.pending.get(m.id)
      if (!p) return
      this.pending.delete(m.id)
      if (this.pending.size === 0) this.worker.unref()
      if ('sigs' in m) p.resolve(m.sigs)
      else p.reject(Object.assign(new Error(m.error.message), m.error))
    })
    this.worker.on('error', (err) => this.gone(err))
    this.worker.on('exit', (code) => this.gone(new Error(`it exited (code ${code})`)))
  }

  private gone(err: Error): void {
    this.onGone(this)
    for (const p of this.pending.values()) {
      p.reject(
        new Pkcs11KeyError(
          'ERR_PKCS11',
          `the PKCS#11 signing thread failed: ${err.message}`,
          'the signatures were not made; the next request starts a new thread (see the server log if it keeps failing)',
          err,
        ),
      )
    }
    this.pending.clear()
  }
}

let nextId = 0

export class SignThreads {
  private readonly modulePath: string
  private readonly maxThreads: number
  private readonly threads: SignThread[] = []

  constructor(modulePath: string, maxThreads: number) {
    this.modulePath = modulePath
    this.maxThreads = Math.max(1, maxThreads)
  }

  /**
   * Signs each of `inputs` with `key` in `session` (which the caller holds for the whole job):
   * all signatures in order, or the first failure.
   */
  sign(
    session: pkcs11js.Handle,
    key: pkcs11js.Handle,
    job: Pick<SignJob, 'mechanism' | 'hash' | 'inputs' | 'outLen'>,
  ): Promise<Uint8Array[]> {
    const t = this.pick()
    const id = nextId++
    return new Promise((resolve, reject) => {
      // A job in flight keeps the process alive, as a pending libuv work item would.
      if (t.pending.size === 0) t.worker.ref()
      t.pending.set(id, { resolve, reject })
      t.worker.postMessage({ id, session, key, ...job } satisfies SignJob)
    })
  }

  /** An idle thread, a new one while under the cap, else the least busy. */
  private pick(): SignThread {
    const idle = this.threads.find((t) => t.pending.size === 0)
    if (idle) return idle
    if (this.threads.length < this.maxThreads) {
      const t = new SignThread(this.modulePath, (gone) => {
        const i = this.threads.indexOf(gone)
        if (i >= 0) this.threads.splice(i, 1)
      })
      this.threads.push(t)
      return t
    }
    return this.threads.reduce((a, b) => (b.pending.size < a.pending.size ? b : a))
  }

  /**
   * Stops every thread. A busy one may be inside C_Sign, which terminate() cannot interrupt: the
   * promise (only when a thread was busy) settles once they are all gone, and until then the
   * caller must not close their sessions or finalize the module (that crashed the process).
   */
  close(): Promise<void> | undefined {
    const all = this.threads.splice(0)
    const busy = all.some((t) => t.pending.size > 0)
    const gone = all.map((t) => t.worker.terminate().then(() => undefined))
    return busy ? Promise.allSettled(gone).then(() => undefined) : undefined
  }
}
