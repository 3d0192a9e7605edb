/**
 * One token, found by label or serial number (slot ids are assigned at C_Initialize and change
 * across reboots and hot-plugs), with a bounded pool of logged-in sessions. A PKCS#11 session
 * runs one operation at a time, so each caller borrows a session for its whole operation
 * (SignInit + Sign); at most `maxSessions` are open and further callers wait in FIFO order.
 * Login happens once per module generation (PKCS#11 login state is per application and token,
 * shared by all its sessions). A wrong PIN is sticky: the token would lock after a few tries.
 */
import pkcs11js from 'pkcs11js'
import { ckrOf, fromPkcs11, isTokenGone, Pkcs11KeyError } from './errors.js'
import type { Pkcs11Module } from './module.js'

export interface TokenSelector {
  readonly label?: string
  readonly serial?: string
}

export function describeSelector(s: TokenSelector): string {
  return s.label !== undefined ? `label "${s.label}"` : `serial "${s.serial}"`
}

type Session = pkcs11js.Handle

export class Pkcs11Token {
  readonly module: Pkcs11Module
  readonly selector: TokenSelector
  private readonly pin: string
  private readonly maxSessions: number
  private slot: pkcs11js.Handle | undefined
  private generation = -1
  private idle: Session[] = []
  private openCount = 0
  private readonly waiters: ((s: Session | Error) => void)[] = []
  private pinError: Error | undefined
  private closed = false

  constructor(module: Pkcs11Module, selector: TokenSelector, pin: string, maxSessions = 4) {
    this.module = module
    this.selector = selector
    this.pin = pin
    this.maxSessions = maxSessions
  }

  /** Runs `fn` with a logged-in session to itself, inside the module's in-flight count. */
  withSession<T>(fn: (p: pkcs11js.PKCS11, session: Session) => Promise<T> | T): Promise<T> {
    return this.module.run(async (p, generation) => {
      const session = await this.borrow(p, generation)
      let broken = false
      try {
        return await fn(p, session)
      } catch (err) {
        broken = isTokenGone(err)
        throw err
      } finally {
        this.giveBack(p, session, generation, broken)
      }
    })
  }

  /** The module generation our sessions belong to (what reopen() needs). */
  get currentGeneration(): number {
    return this.module.generation
  }

  /** After a token-gone error: reinitialize the module (once for all who saw it fail). */
  async reopen(seenGeneration: number): Promise<void> {
    await this.module.reinitialize(seenGeneration)
  }

  private resetIfStale(generation: number): void {
    if (this.generation === generation) return
    // Finalize closed every session; the slot id may have changed with it.
    this.generation = generation
    this.idle = []
    this.openCount = 0
    this.slot = undefined
  }

  private async borrow(p: pkcs11js.PKCS11, generation: number): Promise<Session> {
    if (this.closed) {
      throw new Pkcs11KeyError('ERR_PKCS11', 'the PKCS#11 key manager is closed', 'open a new one')
    }
    if (this.pinError) throw this.pinError
    this.resetIfStale(generation)
    const free = this.idle.pop()
    if (free !== undefined) return free
    if (this.openCount < this.maxSessions) {
      this.openCount++
      try {
        return this.openSession(p)
      } catch (err) {
        this.openCount--
        throw err
      }
    }
    const got = await new Promise<Session | Error>((r) => this.waiters.push(r))
    if (got instanceof Error) throw got
    return got
  }

  private giveBack(p: pkcs11js.PKCS11, s: Session, generation: number, broken: boolean): void {
    if (generation !== this.generation) return // its generation is gone
    if (broken) {
      try {
        p.C_CloseSession(s)
      } catch {
        // already dead
      }
      this.openCount--
      // A waiter gets a fresh session (or the error) rather than waiting forever.
      const w = this.waiters.shift()
      if (w) {
        this.openCount++
        try {
          w(this.openSession(p))
        } catch (err) {
          this.openCount--
          w(err as Error)
        }
      }
      return
    }
    const w = this.waiters.shift()
    if (w) w(s)
    else this.idle.push(s)
  }

  private findSlot(p: pkcs11js.PKCS11): pkcs11js.Handle {
    let slots: pkcs11js.Handle[]
    try {
      slots = p.C_GetSlotList(true)
    } catch (err) {
      throw fromPkcs11('C_GetSlotList', err)
    }
    const matches = slots.filter((s) => {
      try {
        const info = p.C_GetTokenInfo(s)
        // PKCS#11 pads labels and serials with spaces to their fixed width.
        return this.selector.label !== undefined
          ? info.label.trim() === this.selector.label
          : info.serialNumber.trim() === this.selector.serial
      } catch {
        return false // a slot whose token is going away is not ours
      }
    })
    if (matches.length === 0) {
      throw new Pkcs11KeyError(
        'ERR_PKCS11_TOKEN_MISSING',
        `no token with ${describeSelector(this.selector)} in ${this.module.path} (${slots.length} token(s) present)`,
        'plug in or initialize the token (SoftHSM2: spiffe-edge sim hsm init), check token_label / token_serial, and for SoftHSM2 that SOFTHSM2_CONF names its config',
      )
    }
    if (matches.length > 1) {
      throw new Pkcs11KeyError(
        'ERR_PKCS11_TOKEN_MISSING',
        `${matches.length} tokens have ${describeSelector(this.selector)}`,
        'select the token by token_serial instead, or relabel one of them',
      )
    }
    return matches[0]!
  }

  private openSession(p: pkcs11js.PKCS11): Session {
    this.slot ??= this.findSlot(p)
    let s: Session
    try {
      s = p.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION)
    } catch (err) {
      this.slot = undefined
      throw fromPkcs11('C_OpenSession', err)
    }
    try {
      p.C_Login(s, pkcs11js.CKU_USER, this.pin)
    } catch (err) {
      if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
        try {
          p.C_CloseSession(s)
        } catch {
          // nothing to release
        }
        const e = fromPkcs11(`login to the token with ${describeSelector(this.selector)}`, err)
        if (e.code === 'ERR_PKCS11_PIN') this.pinError = e
        throw e
      }
    }
    return s
  }

  /** Closes our sessions (no C_Logout: another manager in this process may share the login). */
  close(): void {
    if (this.closed) return
    this.closed = true
    const err = new Pkcs11KeyError('ERR_PKCS11', 'the PKCS#11 key manager closed', 'open a new one')
    for (const w of this.waiters.splice(0)) w(err)
    if (this.generation === this.module.generation) {
      for (const s of this.idle) {
        try {
          this.module.p.C_CloseSession(s)
        } catch {
          // already gone
        }
      }
    }
    this.idle = []
  }
}
