import type { TpmPublic } from './structures/public.js'

/** A key's wrapped private part and public area: safe to store, usable only in this TPM. */
export interface KeyBlob {
  /** Marshaled TPM2B_PRIVATE. */
  readonly private: Uint8Array
  /** Marshaled TPM2B_PUBLIC. */
  readonly public: Uint8Array
}

/**
 * A loaded object with one owner. Disposing it flushes a transient object, or closes the ESYS
 * reference to a persistent one (which stays in the TPM). swtpm has no resource manager, so a
 * leaked transient costs one of its ~3 object slots: use `await using`.
 */
export class KeyHandle implements AsyncDisposable {
  readonly handle: number
  readonly public: TpmPublic
  readonly name: Uint8Array
  readonly persistent: boolean
  private released = false
  private readonly release: (h: KeyHandle) => Promise<void>

  constructor(
    handle: number,
    pub: TpmPublic,
    name: Uint8Array,
    persistent: boolean,
    release: (h: KeyHandle) => Promise<void>,
  ) {
    this.handle = handle
    this.public = pub
    this.name = name
    this.persistent = persistent
    this.release = release
  }

  get disposed(): boolean {
    return this.released
  }

  async dispose(): Promise<void> {
    if (this.released) return
    this.released = true
    await this.release(this)
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose()
  }
}
