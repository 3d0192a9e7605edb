import { SpiffeEdgeError } from '../errors.js'
import type { NativeError } from '../native/types.js'

/** Response codes worth retrying: the TPM asked us to (RETRY), was interrupted, or is self-testing. */
const RETRYABLE_RC = new Set([0x922 /* TPM_RC_RETRY */, 0x908 /* YIELDED */, 0x90a /* TESTING */])

/** A TPM (or TSS layer) response code, with tpm2-tss's decoded text. */
export class TpmError extends SpiffeEdgeError {
  readonly rc: number
  /** TSS layer: 0 = the TPM itself, 10 = TCTI, 7 = ESAPI, … (bits 16-23 of the rc). */
  readonly layer: number
  readonly decoded: string
  readonly retryable: boolean

  constructor(message: string, rc: number, decoded: string, cause?: unknown) {
    const layer = (rc >>> 16) & 0xff
    super('ERR_TPM', message, {
      cause,
      remedy:
        layer === 10
          ? 'check the TCTI string and that the TPM (or swtpm) is reachable: `spiffe-edge tpm info --tcti …`'
          : 'see the decoded response code; `tpm2_rc_decode` explains it in full',
    })
    this.rc = rc
    this.layer = layer
    this.decoded = decoded
    // TPM-layer warnings carry the RC_VER1|RC_WARN bits; compare the low 12 bits of layer-0 codes.
    this.retryable = layer === 0 && RETRYABLE_RC.has(rc & 0xfff)
  }
}

/** A TPM structure that does not parse: truncated, oversized, wrong tag, unknown algorithm. */
export class TpmStructureError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_TPM_STRUCTURE', message, {
      cause,
      remedy: 'the TPM structure is malformed or unsupported; check where it came from',
    })
  }
}

/** The context (or a handle in it) is closed, disposed, or from before a reconnect. */
export class TpmClosedError extends SpiffeEdgeError {
  constructor(message: string, remedy: string, cause?: unknown) {
    super('ERR_TPM_CLOSED', message, { cause, remedy })
  }
}

/**
 * The addon refused a second command (or a close) while one was in flight on the context.
 * TpmContext queues every call, so this means the raw native context was used around it.
 */
export class TpmBusyError extends SpiffeEdgeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_TPM_BUSY', message, {
      cause,
      remedy:
        'use one TpmContext per TPM and only its methods: it runs one command at a time and closes after the last',
    })
  }
}

/**
 * The addon rejected an argument (a TypeError or RangeError from its checks). TypeScript checks
 * arguments before they cross, so reaching this is a bug in the caller of the native surface.
 */
export class TpmArgumentError extends SpiffeEdgeError {
  /** The JavaScript error class the addon threw: 'TypeError' or 'RangeError'. */
  readonly kind: string
  constructor(message: string, kind: string, cause?: unknown) {
    super('ERR_TPM_ARGUMENT', message, {
      cause,
      remedy:
        'a value passed to the TPM addon is out of range or of the wrong type; report it with the stack trace',
    })
    this.kind = kind
  }
}

type Mapper = (e: NativeError) => SpiffeEdgeError | undefined

/**
 * Every `code` the TPM addon (native/src/addon.cc, commands.cc, esys_context.cc) sets on an error,
 * and the class it becomes. test/unit/native-errors.test.ts reads the C++ and checks each is here.
 */
export const NATIVE_ERROR_CODES: Readonly<Record<string, Mapper>> = {
  ERR_TPM: (e) =>
    typeof e.rc === 'number' ? new TpmError(e.message, e.rc, e.decoded ?? '', e) : undefined,
  ERR_TPM_CLOSED: (e) =>
    new TpmClosedError(e.message, 'open a new TpmContext; this one was closed', e),
  ERR_TPM_BUSY: (e) => new TpmBusyError(e.message, e),
  ERR_TPM_STRUCTURE: (e) => new TpmStructureError(e.message, e),
}

/** The JavaScript error classes the addon throws without a code (its argument checks). */
export const NATIVE_ERROR_KINDS: readonly string[] = ['TypeError', 'RangeError']

/** Turns whatever the addon rejected with into our hierarchy. */
export function fromNative(err: unknown): Error {
  if (err instanceof SpiffeEdgeError) return err
  const e = err as NativeError
  if (
    e &&
    typeof e === 'object' &&
    typeof e.code === 'string' &&
    Object.hasOwn(NATIVE_ERROR_CODES, e.code)
  ) {
    const mapped = NATIVE_ERROR_CODES[e.code]!(e)
    if (mapped) return mapped
  }
  if (err instanceof TypeError || err instanceof RangeError) {
    return new TpmArgumentError(err.message, err.name, err)
  }
  return err instanceof Error ? err : new Error(String(err))
}
