/**
 * One loaded PKCS#11 module per path per process. PKCS#11 allows one C_Initialize per process
 * (a second returns CKR_CRYPTOKI_ALREADY_INITIALIZED and one C_Finalize ends it for everybody),
 * so every key manager on the same module shares one `Pkcs11Module`, counted by references;
 * the last release calls C_Finalize, and so does process exit.
 *
 * `reinitialize()` is the recovery of last resort: SoftHSM and several USB tokens only see a
 * token that came back after C_Finalize + C_Initialize. It waits until no call is inside the
 * module (finalizing under a running C_SignAsync would free state a worker thread is using) and
 * bumps `generation`, which tells every holder that its sessions and handles are dead.
 */
import pkcs11js from 'pkcs11js'
import { ckrOf, fromPkcs11, Pkcs11KeyError } from './errors.js'

const modules = new Map<string, Pkcs11Module>()
let exitHooked = false

export class Pkcs11Module {
  readonly path: string
  readonly p: pkcs11js.PKCS11
  /** Bumped by every reinitialize: sessions and object handles from older generations are dead. */
  generation = 0
  private refs = 0
  private readonly inflight = new Set<Promise<unknown>>()
  private gate: Promise<void> | undefined
  private closed = false

  private constructor(path: string, p: pkcs11js.PKCS11) {
    this.path = path
    this.p = p
  }

  /** Loads and initializes the module at `path`, or shares the one already loaded. */
  static acquire(path: string): Pkcs11Module {
    let m = modules.get(path)
    if (!m) {
      const p = new pkcs11js.PKCS11()
      try {
        p.load(path)
      } catch (err) {
        throw new Pkcs11KeyError(
          'ERR_PKCS11_MODULE',
          `cannot load PKCS#11 module ${path}: ${(err as Error).message}`,
          'set module_path to the vendor library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so) and check that it is installed for this architecture',
          err,
        )
      }
      initialize(p, path)
      m = new Pkcs11Module(path, p)
      modules.set(path, m)
      if (!exitHooked) {
        exitHooked = true
        // A process that exits without closing its key managers still finalizes (some modules
        // flush their state or release a device lock only then).
        process.once('exit', () => {
          // Not under a call still running (a signing thread inside C_Sign at process.exit):
          // finalizing under it crashed the exiting process; the OS frees what it holds.
          for (const mod of modules.values()) if (mod.inflight.size === 0) mod.finalize()
        })
      }
    }
    m.refs++
    return m
  }

  /** Drops one reference; the last one finalizes and unloads the module. */
  release(): void {
    if (this.refs === 0) return
    if (--this.refs > 0) return
    modules.delete(this.path)
    this.finalize()
  }

  private finalize(): void {
    if (this.closed) return
    this.closed = true
    try {
      this.p.C_Finalize()
    } catch {
      // already finalized or the module is broken: nothing more to release
    }
    try {
      this.p.close()
    } catch {
      // the library stays mapped; harmless at exit
    }
  }

  /**
   * Runs one piece of module work, counted so reinitialize() can wait for it. Not re-entrant:
   * `fn` must not call run() or reinitialize().
   */
  async run<T>(fn: (p: pkcs11js.PKCS11, generation: number) => Promise<T> | T): Promise<T> {
    while (this.gate) await this.gate
    if (this.closed) {
      throw new Pkcs11KeyError(
        'ERR_PKCS11_MODULE',
        `PKCS#11 module ${this.path} is closed`,
        'this key manager was closed; open a new one',
      )
    }
    const job = (async () => fn(this.p, this.generation))()
    this.inflight.add(job)
    try {
      return await job
    } finally {
      this.inflight.delete(job)
    }
  }

  /**
   * C_Finalize + C_Initialize, once for everyone who saw generation `seen` fail (callers that
   * lost a race find the generation already moved and return at once).
   */
  async reinitialize(seen: number): Promise<void> {
    while (this.gate) await this.gate
    if (this.generation !== seen || this.closed) return
    let open!: () => void
    this.gate = new Promise<void>((r) => {
      open = r
    })
    try {
      await Promise.allSettled([...this.inflight])
      try {
        this.p.C_Finalize()
      } catch {
        // a module that lost its device may refuse; initializing again is what matters
      }
      initialize(this.p, this.path)
    } finally {
      this.generation++
      this.gate = undefined
      open()
    }
  }
}

function initialize(p: pkcs11js.PKCS11, path: string): void {
  try {
    // OS locking: pkcs11js runs the *Async calls on libuv worker threads, concurrently.
    p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK })
  } catch (err) {
    // Someone in this process (a test, another library) initialized it already: share it.
    if (ckrOf(err) === pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) return
    throw fromPkcs11(`C_Initialize of ${path}`, err)
  }
}

/** For tests: how many modules are loaded right now. */
export function loadedModuleCount(): number {
  return modules.size
}
