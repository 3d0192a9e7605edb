/**
 * Reads a small file whose metadata decides whether it may be trusted (owner, mode, type), with
 * no gap between the check and the read: the file is opened once and the checks are made on the
 * opened descriptor (fstat), so a rename or symlink swapped in after the check cannot change
 * what is read. O_NONBLOCK keeps a FIFO planted at the path from hanging the open.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readSync, type Stats } from 'node:fs'

export interface ReadCheckedOptions {
  /** Refuse a symbolic link at the last component (ELOOP) instead of following it. */
  readonly noFollow: boolean
  /** Largest accepted size; the read never takes more than this plus one byte. */
  readonly maxBytes: number
  /** The reason to refuse the opened file, or undefined to read it. */
  readonly check: (st: Stats) => string | undefined
}

export type ReadChecked =
  | { text: string }
  | { refused: string }
  | { oversize: true }
  | { errno: string }

export function readChecked(file: string, o: ReadCheckedOptions): ReadChecked {
  let fd: number
  try {
    fd = openSync(file, fsc.O_RDONLY | fsc.O_NONBLOCK | (o.noFollow ? fsc.O_NOFOLLOW : 0))
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error'
    return code === 'ELOOP' ? { refused: 'is not a regular file' } : { errno: code }
  }
  try {
    const st = fstatSync(fd)
    if (!st.isFile()) return { refused: 'is not a regular file' }
    const why = o.check(st)
    if (why !== undefined) return { refused: why }
    // Read to EOF through the descriptor, bounded: the file may grow after fstat.
    const buf = Buffer.alloc(o.maxBytes + 1)
    let len = 0
    for (let n = 1; n > 0 && len < buf.length; len += n)
      n = readSync(fd, buf, len, buf.length - len, null)
    if (len > o.maxBytes) return { oversize: true }
    return { text: buf.subarray(0, len).toString('utf8') }
  } catch (err) {
    return { errno: (err as NodeJS.ErrnoException).code ?? 'error' }
  } finally {
    closeSync(fd)
  }
}
