/**
 * The unix workload attestor: the caller's effective uid/gid, user and group names, supplementary
 * groups and, with discoverWorkloadPath, its binary's path and sha256 (SPIRE's `unix` plugin).
 */
import { readFileSync } from 'node:fs'
import { readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { WorkloadAttestationError } from '../errors.js'
import { DEFAULT_PROC_ROOT } from '../proc.js'
import type { PeerInfo, Selector, WorkloadAttestor } from '../types.js'
import { type ProcStatus, parseProcStatus } from './proc-parse.js'
import { BinaryHashCache, IdNamesFile } from './unix-cache.js'

export interface UnixAttestorOptions {
  /** Add path:<binary> and sha256:<hex> selectors (SPIRE's discover_workload_path). */
  readonly discoverWorkloadPath?: boolean
  /** Largest binary hashed for sha256, in bytes: 0 = no limit, < 0 = never hash. Default 0. */
  readonly workloadSizeLimit?: number
  readonly procRoot?: string
  readonly passwdFile?: string
  readonly groupFile?: string
}

export interface UnixAttestor extends WorkloadAttestor {
  /** How many binaries were read and hashed so far (the rest came from the cache). */
  readonly binariesHashed: number
}

type Names = ReadonlyMap<number, string>

/** Per status object (see attest): what the selectors were built from, and them. */
interface Memo {
  readonly users: Names
  readonly groups: Names
  readonly uid: number
  readonly gid: number
  readonly sel: readonly Selector[]
}

function idSelectors(peer: PeerInfo, status: ProcStatus, users: Names, groups: Names): Selector[] {
  const sel: Selector[] = []
  const add = (value: string) => sel.push({ type: 'unix', value })
  // uid and gid are the kernel's record from connect() (SO_PEERCRED), not /proc's current
  // ones: a caller that connects and then execs a setuid binary before we read /proc must not
  // be attested as that binary's owner.
  add(`uid:${peer.uid}`)
  const user = users.get(peer.uid)
  if (user !== undefined) add(`user:${user}`)
  add(`gid:${peer.gid}`)
  const group = groups.get(peer.gid)
  if (group !== undefined) add(`group:${group}`)
  for (const g of status.groups) {
    add(`supplementary_gid:${g}`)
    const name = groups.get(g)
    if (name !== undefined) add(`supplementary_group:${name}`)
  }
  return sel
}

export function unixAttestor(opts: UnixAttestorOptions = {}): UnixAttestor {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  const passwd = new IdNamesFile(opts.passwdFile ?? '/etc/passwd')
  const groupFile = new IdNamesFile(opts.groupFile ?? '/etc/group')
  const hashes = new BinaryHashCache()
  const sizeLimit = opts.workloadSizeLimit ?? 0
  const memo = new WeakMap<ProcStatus, Memo>()
  return {
    kind: 'WorkloadAttestor',
    name: 'unix',
    // A binary hash in flight is shared by callers, so it is never cut short for one of them.
    ignoresSignal: true,
    get binariesHashed() {
      return hashes.hashed
    },
    async attest(peer: PeerInfo): Promise<Selector[]> {
      let status: ProcStatus
      try {
        // Read on every call (supplementary groups can change), synchronously: /proc is served
        // from kernel memory in microseconds, and the libuv pool round trips (open, fstat,
        // read, close) of readFile were the largest cost per call in the profile.
        // Through the file opened at connect when there is one: bound to that process.
        // (Through ProcFiles, this read also serves as the ids of the liveness stamp.)
        status = peer.proc
          ? peer.proc.statusInfo()
          : parseProcStatus(readFileSync(join(procRoot, String(peer.pid), 'status'), 'utf8'))
      } catch (err) {
        throw new WorkloadAttestationError(`unix: cannot read status of pid ${peer.pid}`, err)
      }
      const users = passwd.get()
      const groups = groupFile.get()
      // The same status read (ProcFiles answers the same object while its lines are unchanged)
      // and the same passwd/group versions (the same maps): the same selectors, not rebuilt.
      let m = memo.get(status)
      if (
        m === undefined ||
        m.users !== users ||
        m.groups !== groups ||
        m.uid !== peer.uid ||
        m.gid !== peer.gid
      ) {
        m = {
          users,
          groups,
          uid: peer.uid,
          gid: peer.gid,
          sel: idSelectors(peer, status, users, groups),
        }
        if (Object.isFrozen(status)) memo.set(status, m)
      }
      const sel = m.sel.slice()
      const add = (value: string) => sel.push({ type: 'unix', value })
      if (opts.discoverWorkloadPath) {
        const exe = peer.proc ? peer.proc.exePath : join(procRoot, String(peer.pid), 'exe')
        let path: string
        try {
          path = await readlink(exe)
        } catch (err) {
          throw new WorkloadAttestationError(
            `unix: cannot read the binary path of ${peer.pid}`,
            err,
          )
        }
        add(`path:${path}`)
        if (sizeLimit >= 0) {
          // Hash through /proc/<pid>/exe: it is the binary the process runs, even in another
          // mount namespace or after the file on disk was replaced.
          // Cached by the binary's (dev, inode, size, mtime, ctime): see unix-cache.ts.
          try {
            add(`sha256:${await hashes.hash(exe, path, sizeLimit)}`)
          } catch (err) {
            if (err instanceof WorkloadAttestationError) throw err
            throw new WorkloadAttestationError(`unix: cannot hash ${path}`, err)
          }
        }
      }
      return sel
    },
  }
}
