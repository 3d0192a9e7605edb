/**
 * A PKCS#11 signing thread (worker_threads; started by sign-threads.ts): signs a list of messages
 * with one key in one session, synchronously, and answers with all the signatures or the first
 * failure. The main thread owns everything else: it initialized the module (this thread only
 * opens the same library, whose state is per process, and never calls C_Initialize or
 * C_Finalize), borrowed the session for this job and looked up the key handle.
 */
import { createHash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import pkcs11js from 'pkcs11js'

export interface SignJob {
  readonly id: number
  readonly session: Uint8Array
  readonly key: Uint8Array
  readonly mechanism: number
  /** Hash each message here first (CKM_ECDSA signs a digest); absent: the token hashes. */
  readonly hash?: 'sha256' | 'sha384'
  readonly inputs: readonly Uint8Array[]
  readonly outLen: number
}

export type SignAnswer =
  | { readonly id: number; readonly sigs: Uint8Array[] }
  | {
      readonly id: number
      readonly error: { readonly name: string; readonly message: string; readonly code?: number }
    }

const port = parentPort
if (!port) throw new Error('sign-thread.js runs as a worker thread')
const p = new pkcs11js.PKCS11()
p.load((workerData as { modulePath: string }).modulePath)
const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

port.on('message', (j: SignJob) => {
  const session = buf(j.session)
  const key = buf(j.key)
  try {
    const sigs: Uint8Array[] = []
    for (const input of j.inputs) {
      const data = j.hash ? createHash(j.hash).update(input).digest() : buf(input)
      p.C_SignInit(session, { mechanism: j.mechanism }, key)
      const sig = p.C_Sign(session, data, Buffer.alloc(j.outLen))
      if (sig.length !== j.outLen) {
        throw new Error(`the token returned a ${sig.length}-byte signature, expected ${j.outLen}`)
      }
      sigs.push(sig)
    }
    port.postMessage({ id: j.id, sigs } satisfies SignAnswer)
  } catch (err) {
    const e = err as { name?: unknown; message?: unknown; code?: unknown }
    port.postMessage({
      id: j.id,
      error: {
        name: String(e.name ?? 'Error'),
        message: String(e.message ?? err),
        ...(typeof e.code === 'number' ? { code: e.code } : {}),
      },
    } satisfies SignAnswer)
  }
})
