/**
 * Reading a caller's /proc entries. The kernel's SO_PEERCRED answer names a pid at connect time;
 * by the time attestors run, that process may have exited and its pid been reused. Recording the
 * process start time and /proc/<pid> owner at accept, and comparing after attestation, catches that
 * race (SPIRE's peertracker does the same on Linux).
 */
import { readFileSync, statSync } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'

export const DEFAULT_PROC_ROOT = '/proc'

export interface ProcStamp {
  /** Field 22 of /proc/<pid>/stat: start time in clock ticks since boot, as text. */
  readonly startTime: string
  /** Owner of /proc/<pid> (the process's effective ids). */
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

export function procStampSync(pid: number, procRoot = DEFAULT_PROC_ROOT): ProcStamp {
  const dir = join(procRoot, String(pid))
  const st = statSync(dir)
  let exe: string | undefined
  try {
    exe = exeId(statSync(join(dir, 'exe')))
  } catch {
    exe = undefined
  }
  return {
    startTime: parseStatStartTime(readFileSync(join(dir, 'stat'), 'utf8')),
    uid: st.uid,
    gid: st.gid,
    exe,
  }
}

export async function procStamp(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<ProcStamp> {
  const dir = join(procRoot, String(pid))
  const [st, text, exe] = await Promise.all([
    stat(dir),
    readFile(join(dir, 'stat'), 'utf8'),
    stat(join(dir, 'exe')).then(exeId, () => undefined),
  ])
  return { startTime: parseStatStartTime(text), uid: st.uid, gid: st.gid, exe }
}

/** Why `now` is not the process `then` recorded, or undefined when it is the same one. */
export function stampMismatch(then: ProcStamp, now: ProcStamp): string | undefined {
  if (now.startTime !== then.startTime) return 'process start time changed (pid reused)'
  if (now.uid !== then.uid || now.gid !== then.gid) return 'process owner changed'
  // Also when it became unreadable or readable: either way it is not the binary seen at connect.
  if (now.exe !== then.exe) return 'process executable changed since it connected (exec)'
  return undefined
}
