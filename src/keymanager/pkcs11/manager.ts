/**
 * A KeyManager whose keys live in a PKCS#11 token (an HSM, a smart card, SoftHSM2). Each key is a
 * pair labelled `<key_label_prefix>/<id>` with a random CKA_ID shared by both halves, so several
 * servers or agents can share one token (one prefix each) and a key is found again after a
 * restart by its label and CKA_ID. A key is never replaced: generating an id that exists is
 * refused, like the disk manager refuses to overwrite a key file.
 *
 * Recovery: a signature that fails because the token went away (CKR_DEVICE_REMOVED,
 * CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, ...) reinitializes the module and tries
 * again; a stale object handle is looked up again by label. At most two retries per call, and a
 * missing token is looked for again at most once a second, so a dead HSM cannot make us spin.
 */

import type { KeyObject } from 'node:crypto'
import { randomBytes } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import {
  KEY_TYPES,
  type Key,
  type KeyManager,
  KeyManagerError,
  type KeyType,
  keyTypeOf,
  validateKeyId,
} from '../types.js'
import { fromPkcs11, isHandleGone, isTokenGone, Pkcs11KeyError } from './errors.js'
import { Pkcs11Module } from './module.js'
import {
  batchMechanism,
  findObjects,
  generatePair,
  hasPss,
  readAttr,
  readPublicKey,
  type SignScheme,
  signWith,
} from './objects.js'
import { SignThreads } from './sign-threads.js'
import { describeSelector, Pkcs11Token, type TokenSelector } from './token.js'

export interface Pkcs11Options {
  readonly modulePath: string
  readonly token: TokenSelector
  readonly pin: string
  /** Namespace in the token: `[A-Za-z0-9._-]{1,32}`; labels are `<prefix>/<id>`. */
  readonly keyLabelPrefix: string
  /** Sessions open at once (each runs one signature at a time). */
  readonly maxSessions?: number
}

/** What PKCS#11 makes: the core's key types. */
export const PKCS11_KEY_TYPES: readonly KeyType[] = KEY_TYPES

export interface Pkcs11Key extends Key {
  readonly label: string
  /** Hex of the CKA_ID both halves carry. */
  readonly ckaId: string
  /** RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt), for RSA keys on tokens that offer it. */
  signPss?(data: Uint8Array): Promise<Uint8Array>
}

interface Entry {
  readonly id: string
  readonly label: string
  readonly ckaId: Buffer
  readonly type: KeyType
  readonly publicKey: KeyObject
  handle?: { readonly h: pkcs11js.Handle; readonly generation: number } | undefined
  key?: Pkcs11Key
}

const PREFIX = /^[A-Za-z0-9._-]{1,32}$/
const TOKEN_RETRY_MS = 1000
/** Messages per signMany call: the server's chunks are 16; a bound, not a tuning knob. */
const MAX_SIGN_MANY = 1024

export class Pkcs11KeyManager implements KeyManager {
  readonly prefix: string
  private readonly token: Pkcs11Token
  private readonly threads: SignThreads
  private readonly entries = new Map<string, Entry>()
  private pss: boolean | undefined
  private lastMissingReopen = 0
  private tokenLost = false
  private closed = false

  private constructor(token: Pkcs11Token, prefix: string, maxSessions: number) {
    this.token = token
    this.prefix = prefix
    // One signing thread per session at most: a job holds its session until it is done.
    this.threads = new SignThreads(token.module.path, maxSessions)
  }

  /** Loads the module and logs in once now, so a wrong PIN or a missing token fails at start. */
  static async open(o: Pkcs11Options): Promise<Pkcs11KeyManager> {
    if (!PREFIX.test(o.keyLabelPrefix)) {
      throw new KeyManagerError(
        `invalid key_label_prefix ${JSON.stringify(o.keyLabelPrefix.slice(0, 40))}`,
        'use 1-32 characters of A-Z, a-z, 0-9, dot, dash and underscore',
      )
    }
    const mod = Pkcs11Module.acquire(o.modulePath)
    const token = new Pkcs11Token(mod, o.token, o.pin, o.maxSessions ?? 4)
    const km = new Pkcs11KeyManager(token, o.keyLabelPrefix, o.maxSessions ?? 4)
    try {
      km.pss = await token.withSession((p, s) => hasPss(p, s))
    } catch (err) {
      token.close()
      mod.release()
      throw fromPkcs11(`opening the token with ${describeSelector(o.token)}`, err)
    }
    return km
  }

  /** Runs `fn` in a session, reopening the token after it went away (bounded, see the header). */
  private async withRecovery<T>(
    what: string,
    fn: (p: pkcs11js.PKCS11, s: pkcs11js.Handle, generation: number) => Promise<T> | T,
    onHandleGone?: () => void,
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const generation = this.token.currentGeneration
      try {
        const out = await this.token.withSession((p, s) => fn(p, s, generation))
        this.tokenLost = false
        return out
      } catch (err) {
        if (attempt < 2) {
          if (isHandleGone(err)) {
            onHandleGone?.()
            continue
          }
          if (isTokenGone(err)) {
            await this.token.reopen(generation)
            continue
          }
          const missing = (err as { code?: unknown }).code === 'ERR_PKCS11_TOKEN_MISSING'
          if (missing && Date.now() - this.lastMissingReopen >= TOKEN_RETRY_MS) {
            // Some modules (SoftHSM2, several USB tokens) only see a token again after reinit.
            this.lastMissingReopen = Date.now()
            await this.token.reopen(generation)
            continue
          }
        }
        const e = fromPkcs11(what, err)
        if (e.code === 'ERR_PKCS11_TOKEN_REMOVED' || e.code === 'ERR_PKCS11_TOKEN_MISSING')
          this.tokenLost = true
        throw e
      }
    }
  }

  private label(id: string): string {
    return `${this.prefix}/${id}`
  }

  /** The private key's handle in this generation, looked up by label and CKA_ID when stale. */
  private handleOf(e: Entry, p: pkcs11js.PKCS11, s: pkcs11js.Handle, gen: number): pkcs11js.Handle {
    if (e.handle && e.handle.generation === gen) return e.handle.h
    const found = findObjects(p, s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_LABEL, value: e.label },
      { type: pkcs11js.CKA_ID, value: e.ckaId },
    ])
    if (found.length === 0) {
      // SoftHSM2 answers a vanished token store with "no objects": ask the token itself.
      p.C_GetTokenInfo(p.C_GetSessionInfo(s).slotID)
      throw new Pkcs11KeyError(
        'ERR_PKCS11_KEY_MISSING',
        `key ${e.id} (label ${e.label}) is no longer in the token`,
        'something deleted it behind our back; restore the token from its backup, or (server) start a new CA with a new key_label_prefix',
      )
    }
    e.handle = { h: found[0]!, generation: gen }
    return found[0]!
  }

  private sign(e: Entry, data: Uint8Array, scheme: SignScheme): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(closedError())
    return this.forgetIfMissing(
      e,
      this.withRecovery(
        `signing with key ${e.id}`,
        (p, s, gen) => signWith(p, s, this.handleOf(e, p, s, gen), e.type, data, scheme),
        () => {
          e.handle = undefined
        },
      ),
    )
  }

  /**
   * Signs every message in one job on a signing thread (sign-threads.ts), in one session: all
   * signatures or one coded error for the lot. A token that goes away mid-job is reopened and
   * the whole job tried again (bounded, as for one signature).
   */
  private signMany(e: Entry, data: readonly Uint8Array[]): Promise<Uint8Array[]> {
    if (this.closed) return Promise.reject(closedError())
    if (data.length === 0) return Promise.resolve([])
    if (data.length > MAX_SIGN_MANY) {
      return Promise.reject(
        new Pkcs11KeyError(
          'ERR_PKCS11',
          `${data.length} messages in one signMany call (at most ${MAX_SIGN_MANY})`,
          'split the batch',
        ),
      )
    }
    const m = batchMechanism(e.type)
    return this.forgetIfMissing(
      e,
      this.withRecovery(
        `signing ${data.length} messages with key ${e.id}`,
        (p, s, gen) => this.threads.sign(s, this.handleOf(e, p, s, gen), { ...m, inputs: data }),
        () => {
          e.handle = undefined
        },
      ),
    )
  }

  /** A key gone for good: getKey must look in the token again rather than hand out this entry. */
  private forgetIfMissing<T>(e: Entry, op: Promise<T>): Promise<T> {
    return op.catch((err: unknown) => {
      const code = (err as { code?: unknown }).code
      if (code === 'ERR_PKCS11_KEY_MISSING' && this.entries.get(e.id) === e)
        this.entries.delete(e.id)
      throw err
    })
  }

  private keyOf(e: Entry): Pkcs11Key {
    e.key ??= Object.freeze({
      id: e.id,
      keyType: e.type,
      publicKey: e.publicKey,
      label: e.label,
      ckaId: e.ckaId.toString('hex'),
      sign: (data: Uint8Array) => this.sign(e, data, 'default'),
      signMany: (data: readonly Uint8Array[]) => this.signMany(e, data),
      ...(this.pss && e.type.startsWith('rsa')
        ? { signPss: (data: Uint8Array) => this.sign(e, data, 'pss') }
        : {}),
    })
    return e.key
  }

  async generateKey(id: string, type: KeyType): Promise<Pkcs11Key> {
    validateKeyId(id)
    if (!PKCS11_KEY_TYPES.includes(type)) {
      throw new KeyManagerError(
        `unsupported key type ${JSON.stringify(type)}`,
        `use one of ${PKCS11_KEY_TYPES.join(', ')}`,
      )
    }
    const label = this.label(id)
    const ckaId = randomBytes(16)
    const e = await this.withRecovery(`generating key ${id}`, async (p, s, gen) => {
      if (findObjects(p, s, [{ type: pkcs11js.CKA_LABEL, value: label }]).length > 0) {
        throw new KeyManagerError(
          `the token already holds a key labelled ${label}; refusing to replace it`,
          `delete it only if key ${id} is really unused (anything it signed still trusts it), or use another key_label_prefix`,
        )
      }
      const pair = await generatePair(p, s, type, label, ckaId)
      try {
        const publicKey = readPublicKey(p, s, pair.publicKey)
        const entry: Entry = {
          id,
          label,
          ckaId,
          type,
          publicKey,
          handle: { h: pair.privateKey, generation: gen },
        }
        return entry
      } catch (err) {
        for (const h of [pair.privateKey, pair.publicKey]) p.C_DestroyObject(s, h)
        throw err
      }
    })
    this.entries.set(id, e)
    return this.keyOf(e)
  }

  async getKey(id: string): Promise<Pkcs11Key | undefined> {
    validateKeyId(id)
    const cached = this.entries.get(id)
    if (cached) return this.keyOf(cached)
    const label = this.label(id)
    const e = await this.withRecovery(`looking up key ${id}`, (p, s, gen) => {
      const priv = findObjects(p, s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_LABEL, value: label },
      ])
      if (priv.length === 0) return undefined
      if (priv.length > 1) {
        throw new KeyManagerError(
          `${priv.length} private keys in the token are labelled ${label}`,
          'remove the extra objects (compare their CKA_ID with the certificates in use)',
        )
      }
      const ckaId = readAttr(p, s, priv[0]!, pkcs11js.CKA_ID)
      const pub = findObjects(p, s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_ID, value: ckaId },
      ])
      if (pub.length !== 1) {
        throw new Pkcs11KeyError(
          'ERR_PKCS11_KEY_MISSING',
          `key ${id} (label ${label}) has its private half but ${pub.length} public halves in the token`,
          'restore the public key object from a backup, or delete the key and issue what it signed again',
        )
      }
      const publicKey = readPublicKey(p, s, pub[0]!)
      const type = keyTypeOf(publicKey)
      if (type === undefined) {
        throw new KeyManagerError(
          `key ${id} in the token is not a supported type`,
          `use one of ${PKCS11_KEY_TYPES.join(', ')}`,
        )
      }
      const entry: Entry = {
        id,
        label,
        ckaId,
        type,
        publicKey,
        handle: { h: priv[0]!, generation: gen },
      }
      return entry
    })
    if (!e) return undefined
    this.entries.set(id, e)
    return this.keyOf(e)
  }

  async listKeys(): Promise<Pkcs11Key[]> {
    const labels = await this.withRecovery('listing keys', (p, s) =>
      findObjects(p, s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]).map((h) =>
        readAttr(p, s, h, pkcs11js.CKA_LABEL).toString('utf8'),
      ),
    )
    const ids = labels
      .filter((l) => l.startsWith(`${this.prefix}/`))
      .map((l) => l.slice(this.prefix.length + 1))
      .filter((id) => /^[A-Za-z0-9._-]{1,64}$/.test(id))
      .sort()
    const out: Pkcs11Key[] = []
    for (const id of new Set(ids)) {
      const k = await this.getKey(id)
      if (k) out.push(k)
    }
    return out
  }

  async deleteKey(id: string): Promise<void> {
    validateKeyId(id)
    this.entries.delete(id)
    const label = this.label(id)
    await this.withRecovery(`deleting key ${id}`, (p, s) => {
      for (const h of findObjects(p, s, [{ type: pkcs11js.CKA_LABEL, value: label }])) {
        p.C_DestroyObject(s, h)
      }
    })
  }

  /**
   * Runs `fn` in a logged-in session with this manager's token recovery: for objects other than
   * key pairs (the cache sealer's secret key, pkcs11/secret.ts). Labels are `labelOf(id)`.
   */
  inSession<T>(
    what: string,
    fn: (p: pkcs11js.PKCS11, s: pkcs11js.Handle) => Promise<T> | T,
  ): Promise<T> {
    if (this.closed) return Promise.reject(closedError())
    return this.withRecovery(what, (p, s) => fn(p, s))
  }

  /** The label of object `id` in this manager's namespace (`<key_label_prefix>/<id>`). */
  labelOf(id: string): string {
    validateKeyId(id)
    return this.label(id)
  }

  /** False while the token is gone (the last call failed for it): the agent's readiness. */
  healthy(): boolean {
    return !this.tokenLost && !this.closed
  }

  /** Whether the token offers RSA-PSS (then RSA keys have signPss). */
  get supportsPss(): boolean {
    return this.pss === true
  }

  /** Closes our sessions and drops our reference on the module (the last one finalizes it). */
  close(): void {
    if (this.closed) return
    this.closed = true
    const release = () => {
      this.token.close()
      this.token.module.release()
    }
    // A signing thread still inside C_Sign must be gone before the module may be finalized.
    const busy = this.threads.close()
    if (busy) void busy.then(release)
    else release()
  }
}

function closedError(): Pkcs11KeyError {
  return new Pkcs11KeyError('ERR_PKCS11', 'the PKCS#11 key manager is closed', 'open a new one')
}
