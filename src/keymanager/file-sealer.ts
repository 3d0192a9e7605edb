/**
 * The software-only sealer: the key-encryption key is 32 random bytes in a 0600 file in the data
 * dir. It keeps the cache file alone (a backup, a copied cache) useless, but anyone who can read
 * the data dir as the agent's user (or root) can read the workload keys: the agent says so at
 * start. The key file is created once and never overwritten.
 */
import { hkdf, randomBytes } from 'node:crypto'
import { chmod, link, readFile, rm, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { promisify } from 'node:util'
import { writeTempFile } from '../common/temp-file.js'
import { type CacheSealer, sealError, unwrapWith, wrapWith } from './sealer.js'

const hkdfAsync = promisify(hkdf)
const KEK_FILE_BYTES = 32

export class FileSealer implements CacheSealer {
  readonly kind = 'file'
  readonly path: string
  readonly warning: string
  private kek: Promise<Buffer> | undefined

  constructor(path: string) {
    this.path = path
    this.warning =
      `workload private keys in the agent cache are protected only by the key file ${path} (mode 0600): ` +
      'anyone who can read the data dir as this user or root can read them; use the tpm node attestor to seal them in hardware'
  }

  /** Reads the key file, creating it (hard link: never replacing one) when there is none. */
  private material(create: boolean): Promise<Buffer> {
    this.kek ??= (async () => {
      try {
        const st = await stat(this.path)
        if ((st.mode & 0o077) !== 0) await chmod(this.path, 0o600)
        const b = await readFile(this.path)
        if (b.length !== KEK_FILE_BYTES) throw sealError(`${this.path} is not a cache key file`)
        return b
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOENT' || !create) throw err
      }
      const tmp = await writeTempFile(dirname(this.path), 'cache-kek', randomBytes(KEK_FILE_BYTES))
      try {
        await link(tmp, this.path) // EEXIST rather than replacing a key another start wrote
      } finally {
        await rm(tmp, { force: true })
      }
      return readFile(this.path)
    })()
    this.kek.catch(() => {
      this.kek = undefined
    })
    return this.kek
  }

  private derive(create: boolean) {
    return async (salt: Uint8Array) =>
      new Uint8Array(
        await hkdfAsync(
          'sha256',
          await this.material(create),
          salt,
          'spiffe-edge cache kek v1 file',
          32,
        ),
      )
  }

  wrap(dek: Uint8Array): Promise<Uint8Array> {
    return wrapWith(dek, Buffer.from('file'), this.derive(true))
  }

  async unwrap(wrapped: Uint8Array): Promise<Uint8Array> {
    try {
      return await unwrapWith(wrapped, Buffer.from('file'), this.derive(false))
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_CACHE_SEAL') throw err
      throw sealError(`cannot read the cache key file ${this.path}`, err)
    }
  }
}
