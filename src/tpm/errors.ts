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
  constructor(message: string) {
    super('ERR_TPM_STRUCTURE', message, {
      remedy: 'the TPM structure is malformed or unsupported; check where it came from',
    })
  }
}

/** Turns whatever the addon rejected with into our hierarchy. */
export function fromNative(err: unknown): Error {
  const e = err as NativeError
  if (e && typeof e === 'object' && e.code === 'ERR_TPM' && typeof e.rc === 'number') {
    return new TpmError(e.message, e.rc, e.decoded ?? '', err)
  }
  if (e && typeof e === 'object' && e.code === 'ERR_TPM_CLOSED') {
    return new SpiffeEdgeError('ERR_TPM_CLOSED', e.message, {
      cause: err,
      remedy: 'open a new TpmContext; this one was closed',
    })
  }
  return err instanceof Error ? err : new Error(String(err))
}
