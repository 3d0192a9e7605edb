/**
 * An SRK reference the TPM key manager handed over after key generation (TpmKeyManager.handOffSrk),
 * kept for the attestation that follows so it needs no CreatePrimary of its own. One owner: this
 * holder until take() passes it on; released by release(), or by itself if nobody takes it soon
 * (a key rotation with no attestation after it must not keep a slot).
 */
import { withTpm } from '../../keymanager/tpm.js'
import type { KeyHandle, TpmContext } from '../../tpm/context.js'

/** How long a handed-over SRK waits for the payload (it follows at once in the agent). */
export const ADOPT_MS = 2_000

export class AdoptedSrk {
  private held: { srk: KeyHandle; timer: NodeJS.Timeout } | undefined
  private readonly tpm: TpmContext

  constructor(tpm: TpmContext) {
    this.tpm = tpm
  }

  /** Takes over `srk`; called under the TPM lock (inside generateKey), so older ones go after it. */
  adopt(srk: KeyHandle): void {
    const old = this.take()
    const h = {
      srk,
      timer: setTimeout(() => {
        void withTpm(this.tpm, async () => {
          if (this.held === h) await this.take()?.dispose()
        }).catch(() => undefined)
      }, ADOPT_MS),
    }
    h.timer.unref()
    this.held = h
    if (old) void withTpm(this.tpm, () => old.dispose()).catch(() => undefined)
  }

  /** The held SRK, now the caller's (dispose it); undefined if none. Under the TPM lock. */
  take(): KeyHandle | undefined {
    const h = this.held
    this.held = undefined
    if (h) clearTimeout(h.timer)
    return h?.srk
  }

  /** Flushes the held reference, if any. Under the TPM lock. */
  async release(): Promise<void> {
    await this.take()?.dispose()
  }
}
