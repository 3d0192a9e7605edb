import { createPrivateKey, createPublicKey } from 'node:crypto'
import { chmod, link, mkdir, readdir, readFile, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { writeTempFile } from '../common/temp-file.js'
import { generateSoftwareKeyPair, softwareKey } from './memory.js'
import {
  type Key,
  type KeyManager,
  KeyManagerError,
  type KeyType,
  keyTypeOf,
  validateKeyId,
} from './types.js'

const SUFFIX = '.key.pem'

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err
    ? String((err as { code: unknown }).code)
    : undefined
}

/**
 * Software keys persisted as one unencrypted PKCS#8 PEM per key (`<dir>/<id>.key.pem`), mode 0600
 * in a 0700 directory, like SPIRE's disk key manager. A key file is never overwritten: it is
 * written to a temp file, fsynced, then hard-linked to its name, which fails if the name exists,
 * so a crash never leaves a half-written key and a bug or a lost datastore cannot replace a CA
 * key. Key material never reaches logs or error messages.
 */
export class DiskKeyManager implements KeyManager {
  readonly dir: string
  private ready: Promise<void> | undefined
  // Keys already read: parsing a PEM per signature would dominate signing time. This process owns
  // the directory, so the files do not change under it.
  private readonly cache = new Map<string, Key>()

  constructor(dir: string) {
    this.dir = dir
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}${SUFFIX}`)
  }

  private ensureDir(): Promise<void> {
    this.ready ??= (async () => {
      try {
        await mkdir(this.dir, { recursive: true, mode: 0o700 })
      } catch (err) {
        this.ready = undefined
        throw new KeyManagerError(
          `cannot create key directory ${this.dir}`,
          'check the path and that this user may create it',
          err,
        )
      }
    })()
    return this.ready
  }

  async generateKey(id: string, type: KeyType): Promise<Key> {
    validateKeyId(id)
    await this.ensureDir()
    const { privateKey, publicKey } = await generateSoftwareKeyPair(type)
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8' })
    const target = this.pathOf(id)
    // The temp name never ends in SUFFIX, so listKeys never sees a half-written file.
    let tmp: string | undefined
    try {
      tmp = await writeTempFile(this.dir, id, pem)
      await chmod(tmp, 0o600) // a umask cannot widen it, but a weird ACL default could
      await link(tmp, target) // atomic, and EEXIST instead of replacing
      await rm(tmp, { force: true })
    } catch (err) {
      if (tmp) await rm(tmp, { force: true }).catch(() => {})
      if (errCode(err) === 'EEXIST') {
        throw new KeyManagerError(
          `key file ${target} already exists; refusing to overwrite it`,
          `move the file aside if key ${id} is really unused (anything it signed still trusts it), or restore the datastore that refers to it`,
          err,
        )
      }
      throw new KeyManagerError(
        `cannot write key ${id} to ${this.dir}`,
        'check that the key directory is writable and the disk not full',
        err,
      )
    }
    const key = softwareKey(id, type, privateKey, publicKey)
    this.cache.set(id, key)
    return key
  }

  async getKey(id: string): Promise<Key | undefined> {
    validateKeyId(id)
    const cached = this.cache.get(id)
    if (cached) return cached
    const path = this.pathOf(id)
    let pem: Buffer
    try {
      pem = await readFile(path)
    } catch (err) {
      if (errCode(err) === 'ENOENT') return undefined
      throw new KeyManagerError(`cannot read key file ${path}`, 'check the file permissions', err)
    }
    const key = loadKey(id, path, pem)
    this.cache.set(id, key)
    return key
  }

  async listKeys(): Promise<Key[]> {
    let names: string[]
    try {
      names = await readdir(this.dir)
    } catch (err) {
      if (errCode(err) === 'ENOENT') return []
      throw new KeyManagerError(
        `cannot list key directory ${this.dir}`,
        'check the directory permissions',
        err,
      )
    }
    const keys: Key[] = []
    for (const name of names.sort()) {
      if (!name.endsWith(SUFFIX)) continue
      const id = name.slice(0, -SUFFIX.length)
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) continue // not ours
      const key = await this.getKey(id)
      if (key) keys.push(key)
    }
    return keys
  }

  /**
   * Removes group/other bits from the key directory (→ 0700) and key files (→ 0600). Returns
   * what it fixed, for the caller to warn about; throws when a fix is not possible (e.g. the
   * files belong to another user), so a readable key is never used silently.
   */
  async tightenPermissions(): Promise<string[]> {
    const fixed: string[] = []
    const fix = async (path: string, want: number) => {
      let mode: number
      try {
        mode = (await stat(path)).mode & 0o777
      } catch (err) {
        if (errCode(err) === 'ENOENT') return
        throw new KeyManagerError(`cannot stat ${path}`, 'check the permissions', err)
      }
      if ((mode & 0o077) === 0) return
      try {
        await chmod(path, want)
      } catch (err) {
        throw new KeyManagerError(
          `${path} has mode 0${mode.toString(8)} and cannot be made 0${want.toString(8)}`,
          'run the server as the owner of its key files, or fix their modes by hand',
          err,
        )
      }
      fixed.push(`${path}: 0${mode.toString(8)} -> 0${want.toString(8)}`)
    }
    await fix(this.dir, 0o700)
    for (const name of await keyFileNames(this.dir)) await fix(join(this.dir, name), 0o600)
    return fixed
  }

  async deleteKey(id: string): Promise<void> {
    validateKeyId(id)
    this.cache.delete(id)
    try {
      await rm(this.pathOf(id), { force: true })
    } catch (err) {
      throw new KeyManagerError(
        `cannot delete key ${id} from ${this.dir}`,
        'check the directory permissions',
        err,
      )
    }
  }
}

/** Names of key files in `dir` (empty when it does not exist); nothing is parsed. */
export async function keyFileNames(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((n) => n.endsWith(SUFFIX)).sort()
  } catch (err) {
    if (errCode(err) === 'ENOENT') return []
    throw new KeyManagerError(`cannot list key directory ${dir}`, 'check its permissions', err)
  }
}

function loadKey(id: string, path: string, pem: Buffer): Key {
  const corrupt = (why: string, cause?: unknown): KeyManagerError =>
    new KeyManagerError(
      `key file ${path} ${why}`,
      `restore the file from a backup, or delete it and generate key ${id} again ` +
        '(anything it signed must then be re-issued)',
      cause,
    )
  let privateKey: ReturnType<typeof createPrivateKey>
  try {
    // Parse errors from OpenSSL carry no key bytes, but keep the cause for debugging.
    privateKey = createPrivateKey({ key: pem, format: 'pem' })
  } catch (err) {
    throw corrupt('is not a valid PKCS#8 PEM private key', err)
  } finally {
    pem.fill(0) // do not leave the PEM text lying around in the heap
  }
  const keyType = keyTypeOf(privateKey)
  if (keyType === undefined) throw corrupt('holds an unsupported key type')
  return softwareKey(id, keyType, privateKey, createPublicKey(privateKey))
}
