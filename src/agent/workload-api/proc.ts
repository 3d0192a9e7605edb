/**
 * Reading a caller's /proc entries. The kernel's SO_PEERCRED answer names a pid at connect time;
 * by the time attestors run, that process may have exited and its pid been reused. Recording the
 * process start time and /proc/<pid> owner at accept, and comparing after attestation, catches that
 * race (SPIRE's peertracker does the same on Linux).
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { type ProcStatus, parseProcStatus } from './attestors/proc-parse.js'

export const DEFAULT_PROC_ROOT = '/proc'

export interface ProcStamp {
  /** Field 22 of /proc/<pid>/stat: start time in clock ticks since boot, as text. */
  readonly startTime: string
  /**
   * The process's effective ids, from status's Uid:/Gid: lines. The kernel gives /proc/<pid>
   * (a 0555 directory, so even for a non-dumpable process) these same ids as owner, but the
   * unix attestor reads status anyway: taking them from that read saves a stat per call.
   */
  readonly uid: number
  readonly gid: number
  /**
   * The binary the process runs, as device:inode of /proc/<pid>/exe; undefined when the agent may
   * not look (another user's process, agent not root). exec() keeps the pid and the start time,
   * so without this a caller could connect, fork, and exec a binary with more privilege in the
   * parent while the child, holding the connection, is served the new binary's identity.
   */
  readonly exe: string | undefined
}

/** Start time from /proc/<pid>/stat text; the comm field may hold spaces and parentheses. */
export function parseStatStartTime(text: string): string {
  const close = text.lastIndexOf(')')
  if (close < 0) throw new Error('no ")" after comm in /proc/<pid>/stat')
  // Fields after comm start at field 3 (state); starttime is field 22.
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/)
  const start = fields[22 - 3]
  if (start === undefined || !/^\d+$/.test(start)) throw new Error('no starttime in stat')
  return start
}

const exeId = (st: { dev: number; ino: number }) => `${st.dev}:${st.ino}`

/** Largest /proc text read through ProcFiles (status with NGROUPS_MAX groups is ~450 KiB). */
export const PROC_FILE_MAX_BYTES = 1 << 20

/** One buffer for every read: the reads are synchronous, so no two overlap. */
let readBuf = Buffer.allocUnsafe(16 * 1024)

/** Reads a whole /proc file into readBuf; returns its length. */
function preadAll(fd: number): number {
  let n = 0
  for (;;) {
    if (n === readBuf.length) {
      if (readBuf.length >= PROC_FILE_MAX_BYTES) throw new Error('/proc file too large')
      const bigger = Buffer.allocUnsafe(readBuf.length * 2)
      readBuf.copy(bigger, 0, 0, n)
      readBuf = bigger
    }
    // Explicit positions from 0: the kernel renders the file afresh for every read from 0.
    const r = readSync(fd, readBuf, n, readBuf.length - n, n)
    if (r === 0) return n
    n += r
  }
}

const isSpaceByte = (c: number) => c === 32 || (c >= 9 && c <= 13)

/**
 * parseStatStartTime on the bytes in readBuf, without making the file a string and splitting
 * all ~50 fields (the largest allocation of each attestation in the heap profile).
 */
function startTimeOfBuf(n: number): string {
  const close = n === 0 ? -1 : readBuf.lastIndexOf(0x29, n - 1)
  if (close < 0) throw new Error('no ")" after comm in /proc/<pid>/stat')
  let i = close + 1
  // Fields after comm start at field 3 (state); starttime is field 22.
  for (let field = 3; ; field++) {
    while (i < n && isSpaceByte(readBuf[i]!)) i++
    const start = i
    while (i < n && !isSpaceByte(readBuf[i]!)) i++
    if (start === i) throw new Error('no starttime in stat')
    if (field < 22) continue
    for (let j = start; j < i; j++) {
      const c = readBuf[j]!
      if (c < 0x30 || c > 0x39) throw new Error('no starttime in stat')
    }
    return readBuf.toString('latin1', start, i)
  }
}

const STATUS_LINES = ['Uid', 'Gid', 'Groups'].map((name) => ({
  atStart: Buffer.from(`${name}:`),
  after: Buffer.from(`\n${name}:`),
}))

/** Where the status lines of STATUS_LINES are in readBuf: [start, end) pairs, -1 when absent. */
const lineAt = new Int32Array(STATUS_LINES.length * 2)

/**
 * Finds the Uid:, Gid: and Groups: lines of the status in readBuf (the first of each, at a line
 * start, as parseProcStatus picks them) into `lineAt`.
 */
function findStatusLines(n: number): void {
  // A view of this read only: readBuf past n holds older reads.
  const b = readBuf.subarray(0, n)
  STATUS_LINES.forEach((l, i) => {
    let at = b.subarray(0, l.atStart.length).equals(l.atStart) ? 0 : -1
    if (at < 0) {
      const nl = b.indexOf(l.after)
      at = nl < 0 ? -1 : nl + 1
    }
    let end = at < 0 ? -1 : b.indexOf(0x0a, at)
    if (at >= 0 && end < 0) end = n
    lineAt[2 * i] = at
    lineAt[2 * i + 1] = end
  })
}

/**
 * Only the Uid:, Gid: and Groups: lines of the status in readBuf, as text (findStatusLines
 * first): the unix attestor parses nothing else, and the whole file is ~1.5 KiB to decode.
 */
function statusLinesText(): string {
  let out = ''
  for (let i = 0; i < lineAt.length; i += 2) {
    if (lineAt[i]! >= 0) out += `${readBuf.toString('utf8', lineAt[i], lineAt[i + 1])}\n`
  }
  return out
}

/** Whether the lines found are byte for byte `prev` (statusLinesBytes of an earlier read). */
function sameStatusLines(prev: Buffer): boolean {
  let off = 0
  for (let i = 0; i < lineAt.length; i += 2) {
    const at = lineAt[i]!
    // Absent lines are recorded as a lone 0xff (never in a status line) to keep positions.
    if (at < 0) {
      if (prev[off] !== 0xff) return false
      off++
      continue
    }
    const len = lineAt[i + 1]! - at
    if (off + len + 1 > prev.length) return false
    if (readBuf.compare(prev, off, off + len, at, at + len) !== 0) return false
    if (prev[off + len] !== 0x0a) return false
    off += len + 1
  }
  return off === prev.length
}

/** The lines found, copied (each ended by \n; an absent one as 0xff) for sameStatusLines. */
function statusLinesBytes(): Buffer {
  const parts: Buffer[] = []
  for (let i = 0; i < lineAt.length; i += 2) {
    const at = lineAt[i]!
    if (at < 0) parts.push(Buffer.from([0xff]))
    else parts.push(readBuf.subarray(at, lineAt[i + 1]), Buffer.from([0x0a]))
  }
  return Buffer.concat(parts)
}

/**
 * A caller's /proc/<pid>/stat and /proc/<pid>/status, opened when it connects and read again for
 * every attestation. An open /proc file stays bound to the process it was opened for: once that
 * process is gone, reads fail (ESRCH) even if its pid now names another process, so a reused pid
 * cannot be read as the caller. (Re-opening by path per call also cost most of each read in the
 * profile.) Closed with the connection.
 */
export class ProcFiles {
  /** /proc/<pid> and /proc/<pid>/exe, joined once (path.join per call showed in the profile). */
  readonly dir: string
  readonly exePath: string
  private readonly statFd: number
  /**
   * Opened by path after `statFd`: it needs no binding of its own, because the stamp taken at
   * connect and every attestation end with a read through `statFd`, which fails unless the
   * process that connected is still alive (so its pid was not reused when this was opened).
   */
  private statusFd: number | undefined
  private closed = false
  /** Counts attestations begun (beginAttestation); `lastStatus` was read during `lastEpoch`. */
  private epoch = 0
  private lastStatus: ProcStatus | undefined
  private lastEpoch = -1
  /** The status lines `lastStatus` was parsed from (statusLinesBytes). */
  private lastLines: Buffer | undefined

  private constructor(dir: string, statFd: number) {
    this.dir = dir
    this.exePath = join(dir, 'exe')
    this.statFd = statFd
  }

  static open(pid: number, procRoot = DEFAULT_PROC_ROOT): ProcFiles {
    const dir = join(procRoot, String(pid))
    return new ProcFiles(dir, openSync(join(dir, 'stat'), 'r'))
  }

  stat(): string {
    if (this.closed) throw new Error('the connection is closed')
    return readBuf.toString('utf8', 0, preadAll(this.statFd))
  }

  /** Field 22 of stat (parseStatStartTime's answer), read without decoding the whole file. */
  startTime(): string {
    if (this.closed) throw new Error('the connection is closed')
    return startTimeOfBuf(preadAll(this.statFd))
  }

  status(): string {
    return readBuf.toString('utf8', 0, this.readStatus())
  }

  /** The status lines parseProcStatus reads (Uid, Gid, Groups), fresh from the kernel. */
  statusIds(): string {
    findStatusLines(this.readStatus())
    return statusLinesText()
  }

  /**
   * parseProcStatus of a fresh read, remembered for the stamp of the attestation in progress.
   * When those lines are byte for byte the previous read's, the previous answer (the same
   * object, so callers may key memos on it) without parsing or allocating again.
   */
  statusInfo(): ProcStatus {
    findStatusLines(this.readStatus())
    let s = this.lastStatus
    if (s === undefined || this.lastLines === undefined || !sameStatusLines(this.lastLines)) {
      s = Object.freeze(parseProcStatus(statusLinesText()))
      Object.freeze(s.groups)
      this.lastLines = statusLinesBytes()
    }
    this.lastStatus = s
    this.lastEpoch = this.epoch
    return s
  }

  /**
   * Marks an attestation's start (after its calls arrived); pass the answer to procStampSync.
   * A status read from then on (the unix attestor's) serves as the stamp's ids, so the kernel
   * renders status once per attestation, not twice.
   */
  beginAttestation(): number {
    return ++this.epoch
  }

  /** Status read since attestation `since` began, else read now. */
  statusSince(since: number): ProcStatus {
    if (this.lastStatus !== undefined && this.lastEpoch >= since) return this.lastStatus
    return this.statusInfo()
  }

  private readStatus(): number {
    if (this.closed) throw new Error('the connection is closed')
    this.statusFd ??= openSync(join(this.dir, 'status'), 'r')
    return preadAll(this.statusFd)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.lastStatus = undefined
    closeSync(this.statFd)
    if (this.statusFd !== undefined) closeSync(this.statusFd)
  }
}

/**
 * `files`: the caller's ProcFiles; its status and stat are read through them (bound to the
 * process), the executable by path (stat() of an open /proc file does not follow exec).
 * `since`: the attestation's beginAttestation() answer; a status read since then is used for
 * the ids, otherwise status is read here. The order matters: the path stat of exe first, the
 * read through the bound stat file last, so a success proves the exe stat saw the caller.
 */
export function procStampSync(
  pid: number,
  procRoot = DEFAULT_PROC_ROOT,
  files?: ProcFiles,
  since = Number.POSITIVE_INFINITY,
): ProcStamp {
  const dir = files ? files.dir : join(procRoot, String(pid))
  let exe: string | undefined
  try {
    exe = exeId(statSync(files ? files.exePath : join(dir, 'exe')))
  } catch {
    exe = undefined
  }
  const ids = files
    ? files.statusSince(since)
    : parseProcStatus(readFileSync(join(dir, 'status'), 'utf8'))
  return {
    startTime: files
      ? files.startTime()
      : parseStatStartTime(readFileSync(join(dir, 'stat'), 'utf8')),
    uid: ids.uid,
    gid: ids.gid,
    exe,
  }
}

export async function procStamp(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<ProcStamp> {
  const dir = join(procRoot, String(pid))
  const exe = await stat(join(dir, 'exe')).then(exeId, () => undefined)
  const ids = parseProcStatus(await readFile(join(dir, 'status'), 'utf8'))
  const text = await readFile(join(dir, 'stat'), 'utf8')
  return { startTime: parseStatStartTime(text), uid: ids.uid, gid: ids.gid, exe }
}

/** Why `now` is not the process `then` recorded, or undefined when it is the same one. */
export function stampMismatch(then: ProcStamp, now: ProcStamp): string | undefined {
  if (now.startTime !== then.startTime) return 'process start time changed (pid reused)'
  if (now.uid !== then.uid || now.gid !== then.gid) return 'process owner changed'
  // Also when it became unreadable or readable: either way it is not the binary seen at connect.
  if (now.exe !== then.exe) return 'process executable changed since it connected (exec)'
  return undefined
}
