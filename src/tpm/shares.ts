/**
 * Loaded objects several owners hold at the same time: the SRK, and a key the TPM attestor keeps
 * loaded from its payload to its answer while the key manager signs the CSR with it. Loaded once;
 * each owner gets its own handle to dispose, and the object is flushed when the last one is. A
 * reconnect makes a share stale (its TPM forgot it): the next taker loads it again.
 */
import type { TpmConnection } from './connection.js'
import { TpmError } from './errors.js'
import type { KeyHandle } from './key-handle.js'

interface Share {
  readonly handle: KeyHandle
  refs: number
}

export class LoadedShares {
  private readonly shares = new Map<string, Share>()
  private readonly conn: TpmConnection

  constructor(conn: TpmConnection) {
    this.conn = conn
  }

  /** Another handle to the object shared under `id`, if it is loaded in the current context. */
  borrow(id: string): KeyHandle | undefined {
    const s = this.shares.get(id)
    if (!s) return undefined
    if (!this.conn.isCurrent(s.handle)) {
      // The old references release nothing: their generation is gone.
      this.shares.delete(id)
      return undefined
    }
    return this.handleOf(id, s)
  }

  /** The object shared under `id`, loaded with `load` when nobody holds it. */
  async take(id: string, load: () => Promise<KeyHandle>): Promise<KeyHandle> {
    const held = this.borrow(id)
    if (held) return held
    const handle = await load()
    // Another taker may have loaded it while this one waited: one copy stays.
    const raced = this.borrow(id)
    if (raced) {
      await handle.dispose()
      return raced
    }
    const s: Share = { handle, refs: 0 }
    this.shares.set(id, s)
    return this.handleOf(id, s)
  }

  private handleOf(id: string, s: Share): KeyHandle {
    s.refs++
    return this.conn.borrow(s.handle, async () => {
      if (--s.refs > 0) return
      if (this.shares.get(id) === s) this.shares.delete(id)
      await s.handle.dispose()
    })
  }
}

const TPM_RC_OBJECT_MEMORY = 0x902

function outOfObjectSlots(err: unknown): boolean {
  return err instanceof TpmError && err.layer === 0 && (err.rc & 0xfff) === TPM_RC_OBJECT_MEMORY
}

/**
 * Objects kept loaded only to save work later (the TPM attestor's AK and agent key across its
 * round trip), which their holder loads again if they are gone: flushed when a load finds no free
 * object slot (swtpm has three and no resource manager), so holding them never makes another
 * user's command fail, a cache-key signature during an attestation say.
 */
export class YieldableObjects {
  private readonly offered = new Set<KeyHandle>()

  /** Offers `h` to be flushed under slot pressure; the returned function withdraws the offer. */
  offer(h: KeyHandle): () => void {
    this.offered.add(h)
    return () => this.offered.delete(h)
  }

  /** Runs `load`; out of object slots with something offered, flushes that and tries once more. */
  async withRoom<T>(load: () => Promise<T>, parent?: KeyHandle): Promise<T> {
    try {
      return await load()
    } catch (err) {
      if (!outOfObjectSlots(err)) throw err
      const give = [...this.offered].filter((h) => !h.disposed && h.handle !== parent?.handle)
      if (give.length === 0) throw err
      for (const h of give) {
        this.offered.delete(h)
        await h.dispose()
      }
      return await load()
    }
  }
}
