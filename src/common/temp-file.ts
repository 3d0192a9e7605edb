/**
 * The first half of every atomic write of a secret or key file: a new temp file in the target's
 * directory (never an existing one: 'wx'), mode 0600 from creation, written and fsynced before
 * anyone links or renames it into place, so a crash never leaves half a key under the real name.
 */
import { randomBytes } from 'node:crypto'
import { open, rm } from 'node:fs/promises'
import { join } from 'node:path'

/** Writes `data` to `<dir>/.<base>.<random>.tmp` and returns that path; removes it on failure. */
export async function writeTempFile(
  dir: string,
  base: string,
  data: string | Uint8Array,
): Promise<string> {
  // The temp name starts with a dot and ends in .tmp, so no listing of keys ever sees it.
  const tmp = join(dir, `.${base}.${randomBytes(6).toString('hex')}.tmp`)
  const fh = await open(tmp, 'wx', 0o600)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } catch (err) {
    await fh.close().catch(() => undefined)
    await rm(tmp, { force: true }).catch(() => undefined)
    throw err
  }
  await fh.close()
  return tmp
}

/**
 * Fsyncs a directory, so a rename or link into it survives a crash (the file's own fsync covers
 * its bytes, not its name). Filesystems that cannot sync a directory (EINVAL) are left as they are.
 */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } catch (err) {
    if ((err as { code?: string }).code !== 'EINVAL') throw err
  } finally {
    await fh.close()
  }
}
