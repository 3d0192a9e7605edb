/**
 * What the unix attestor may reuse between calls without weakening attestation: parsed
 * passwd/group files and binary hashes, each valid only while the file it came from is
 * provably unchanged. A profile of the Workload API showed that re-reading /etc/passwd and
 * /etc/group on every call (open, fstat, read, close through the libuv pool, then a parse) was
 * most of an attestation; with discover_workload_path, hashing the caller's binary on every call
 * made 1,000 concurrent streams wait 30 s.
 *
 * "Unchanged" is the file's (device, inode, size, mtime, ctime) in nanoseconds. Any write or
 * rename changes at least one of them, and ctime cannot be set from user space (utimes() sets
 * ctime to now), so a file edited back to an old mtime still misses. Re-validation is a stat per
 * call, a few microseconds.
 *
 * One hole remains in that identity: the kernel stamps mtime and ctime from a coarse clock (one
 * jiffy, 1-10 ms), so a same-size rewrite in place within the same tick as the read keeps every
 * field. As git does for "racily clean" index entries, nothing is cached while the file's ctime
 * is less than SETTLE_MS old; such a file is read again on every call until it settles.
 */
import { createHash } from 'node:crypto'
import { type BigIntStats, createReadStream, readFileSync, type Stats, statSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { WorkloadAttestationError } from '../errors.js'
import { parseIdNames } from './proc-parse.js'

/** Identity of a file's content as far as the kernel tells: any change to it changes this. */
export function fileVersion(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`
}

/** Files changed more recently than this are not cached (see above); far above any tick. */
export const SETTLE_MS = 2000

/** Whether a file's version can be trusted to change with its content (it is not racy). */
export function settled(st: BigIntStats, nowMs = Date.now()): boolean {
  return st.ctimeNs < BigInt(nowMs - SETTLE_MS) * 1_000_000n
}

/** Largest passwd/group file read; a bigger one attests ids without names (fewer selectors). */
export const ID_FILE_MAX_BYTES = 32 * 2 ** 20

/** id → name of a passwd or group file, re-read whenever its version changes. */
export class IdNamesFile {
  private version: NumberVersion | undefined
  private names = new Map<number, string>()
  readonly file: string

  constructor(file: string) {
    this.file = file
  }

  /**
   * Synchronous on purpose: a stat of a local file is microseconds, and the threadpool round trips
   * of the async version were what the profile showed. Missing or unreadable: no names (minimal
   * containers have no passwd); ids still attest.
   */
  get(): ReadonlyMap<number, string> {
    let st: Stats
    try {
      // Number stats, not bigint (half the cost per call): a version is only cached once its
      // ctime is SETTLE_MS old, and any later change sets ctime to now, seconds apart, far
      // beyond the sub-microsecond precision a double keeps of a nanosecond time.
      st = statSync(this.file)
    } catch {
      this.version = undefined
      this.names = new Map()
      return this.names
    }
    if (this.version !== undefined && sameVersion(this.version, st)) return this.names
    try {
      if (st.size > ID_FILE_MAX_BYTES) throw new Error('too large')
      const text = readFileSync(this.file, 'utf8')
      // Re-stat: a change while reading must not be cached under the old version.
      const after = statSync(this.file)
      this.names = parseIdNames(text)
      this.version =
        sameVersion(numberVersion(st), after) && st.ctimeMs < Date.now() - SETTLE_MS
          ? numberVersion(st)
          : undefined
    } catch {
      this.names = new Map()
      this.version = undefined
    }
    return this.names
  }
}

/** (dev, inode, size, mtime, ctime) of a number stat, compared field by field on every call. */
type NumberVersion = readonly [number, number, number, number, number]
const numberVersion = (st: Stats): NumberVersion => [
  st.dev,
  st.ino,
  st.size,
  st.mtimeMs,
  st.ctimeMs,
]
/** No string per call (formatting five doubles was most of the check's own cost). */
const sameVersion = (v: NumberVersion, st: Stats) =>
  v[0] === st.dev &&
  v[1] === st.ino &&
  v[2] === st.size &&
  v[3] === st.mtimeMs &&
  v[4] === st.ctimeMs

function sha256Stream(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256')
    const s = createReadStream(path)
    s.on('data', (chunk) => hash.update(chunk))
    s.on('error', reject)
    s.on('end', () => resolve(hash.digest('hex')))
  })
}

/** Most binaries whose hash is kept (a map entry is ~150 bytes: the bound is about memory). */
export const HASH_CACHE_MAX = 4096

/**
 * sha256 of binaries by file version. Callers running the same binary share one hash (and one
 * read while it is in flight); a replaced binary, in place or by rename, has another version
 * and is hashed again.
 */
export class BinaryHashCache {
  private readonly done = new Map<string, string>()
  private readonly inflight = new Map<string, Promise<string>>()
  /** How many times a file was actually read and hashed (tests, diagnostics). */
  hashed = 0

  /**
   * `exe` is read (and stat-ed) as given: for the unix attestor that is /proc/<pid>/exe, the
   * binary the process runs. `sizeLimit` > 0 refuses larger files.
   */
  async hash(exe: string, path: string, sizeLimit: number): Promise<string> {
    const st = await stat(exe, { bigint: true })
    if (sizeLimit > 0 && st.size > BigInt(sizeLimit)) {
      throw new WorkloadAttestationError(
        `unix: workload ${path} exceeds the size limit (${st.size} > ${sizeLimit} bytes)`,
      )
    }
    const v = fileVersion(st)
    const hit = this.done.get(v)
    if (hit !== undefined) {
      // Most recently used last, so eviction drops the oldest.
      this.done.delete(v)
      this.done.set(v, hit)
      return hit
    }
    if (!settled(st)) return this.compute(exe, v, false)
    let p = this.inflight.get(v)
    if (!p) {
      // No caller's abort signal here: the read is shared, and one caller leaving must not fail
      // the others (each caller's own deadline still applies in the middleware).
      p = this.compute(exe, v, true).finally(() => this.inflight.delete(v))
      this.inflight.set(v, p)
    }
    return p
  }

  private async compute(exe: string, v: string, keep: boolean): Promise<string> {
    this.hashed++
    const digest = await sha256Stream(exe)
    // Changed while we read it: the digest may mix two contents. Fail this call (closed) and
    // cache nothing; the next call hashes the new version.
    if (fileVersion(await stat(exe, { bigint: true })) !== v) {
      throw new WorkloadAttestationError('unix: the workload binary changed while it was hashed')
    }
    if (!keep) return digest
    this.done.set(v, digest)
    while (this.done.size > HASH_CACHE_MAX) this.done.delete(this.done.keys().next().value!)
    return digest
  }
}
