/**
 * PKCS#11 failures as SpiffeEdgeErrors: the CKR_* name stays in the message (operators search
 * for it), the code says what kind of failure it is and the remedy what to do about it.
 */
import pkcs11js from 'pkcs11js'
import { type ErrorCode, SpiffeEdgeError } from '../../errors.js'

export type Pkcs11ErrorCode = Extract<
  ErrorCode,
  | 'ERR_PKCS11'
  | 'ERR_PKCS11_MODULE'
  | 'ERR_PKCS11_PIN'
  | 'ERR_PKCS11_TOKEN_MISSING'
  | 'ERR_PKCS11_TOKEN_REMOVED'
  | 'ERR_PKCS11_KEY_MISSING'
>

export class Pkcs11KeyError extends SpiffeEdgeError {
  /** The CKR_* value when the failure came from the module. */
  readonly ckr: number | undefined

  constructor(
    code: Pkcs11ErrorCode,
    message: string,
    remedy: string,
    cause?: unknown,
    ckr?: number,
  ) {
    super(code, message, { remedy, cause })
    this.ckr = ckr
  }
}

/** The CKR_* value of a pkcs11js error (undefined for anything else). */
export function ckrOf(err: unknown): number | undefined {
  if (err instanceof SpiffeEdgeError) return (err as Pkcs11KeyError).ckr
  if (typeof err !== 'object' || err === null) return undefined
  const e = err as { name?: unknown; code?: unknown }
  return e.name === 'Pkcs11Error' && typeof e.code === 'number' ? e.code : undefined
}

export function ckrName(ckr: number | undefined): string {
  if (ckr === undefined) return 'unknown'
  for (const [k, v] of Object.entries(pkcs11js)) if (k.startsWith('CKR_') && v === ckr) return k
  return `0x${ckr.toString(16)}`
}

/**
 * The token or the session is gone (unplugged, HSM restarted, token store replaced, module lost
 * its state): every session handle is now useless and only a reopen can help.
 */
const TOKEN_GONE = new Set<number>([
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_GENERAL_ERROR,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_SLOT_ID_INVALID,
])

/** The handle we held for a key no longer names it (deleted, or the token store was replaced). */
const HANDLE_GONE = new Set<number>([
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_KEY_HANDLE_INVALID,
])

export function isTokenGone(err: unknown): boolean {
  const c = ckrOf(err)
  return c !== undefined && TOKEN_GONE.has(c)
}

export function isHandleGone(err: unknown): boolean {
  const c = ckrOf(err)
  return c !== undefined && HANDLE_GONE.has(c)
}

/** Wraps a module failure in an error with a code and a remedy. */
export function fromPkcs11(what: string, err: unknown): SpiffeEdgeError {
  if (err instanceof SpiffeEdgeError) return err
  const ckr = ckrOf(err)
  const name = ckrName(ckr)
  if (ckr === pkcs11js.CKR_PIN_INCORRECT || ckr === pkcs11js.CKR_PIN_LOCKED) {
    return new Pkcs11KeyError(
      'ERR_PKCS11_PIN',
      `${what}: the token refused the PIN (${name})`,
      ckr === pkcs11js.CKR_PIN_LOCKED
        ? 'the user PIN is locked: unlock it with the SO PIN (e.g. softhsm2-util / the vendor tool), then fix pin_file or pin_env'
        : 'fix the PIN in pin_file or pin_env; spiffe-edge will not retry a wrong PIN, so the token does not lock',
      err,
      ckr,
    )
  }
  if (isTokenGone(err)) {
    return new Pkcs11KeyError(
      'ERR_PKCS11_TOKEN_REMOVED',
      `${what}: the token went away (${name})`,
      'check that the HSM or token is connected and its service running; spiffe-edge reopens it on the next operation',
      err,
      ckr,
    )
  }
  return new Pkcs11KeyError(
    'ERR_PKCS11',
    `${what} failed: ${ckr === undefined ? String((err as Error)?.message ?? err) : name}`,
    'check the token with `spiffe-edge keys test --config FILE` and the module vendor documentation for this CKR code',
    err,
    ckr,
  )
}
