/**
 * The unix workload attestor: the caller's effective uid/gid, user and group names, supplementary
 * groups and, with discoverWorkloadPath, its binary's path and sha256 (SPIRE's `unix` plugin).
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readFile, readlink, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { WorkloadAttestationError } from '../errors.js'
import { DEFAULT_PROC_ROOT } from '../proc.js'
import type { PeerInfo, Selector, WorkloadAttestor } from '../types.js'
import { parseIdNames, parseProcStatus } from './proc-parse.js'

export interface UnixAttestorOptions {
  /** Add path:<binary> and sha256:<hex> selectors (SPIRE's discover_workload_path). */
  readonly discoverWorkloadPath?: boolean
  /** Largest binary hashed for sha256, in bytes: 0 = no limit, < 0 = never hash. Default 0. */
  readonly workloadSizeLimit?: number
  readonly procRoot?: string
  readonly passwdFile?: string
  readonly groupFile?: string
}

async function names(file: string): Promise<Map<number, string>> {
  try {
    return parseIdNames(await readFile(file, 'utf8'))
  } catch {
    // No passwd/group (minimal containers): ids still attest, names are simply absent.
    return new Map()
  }
}

function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256')
    const s = createReadStream(path, signal ? { signal } : {})
    s.on('data', (chunk) => hash.update(chunk))
    s.on('error', reject)
    s.on('end', () => resolve(hash.digest('hex')))
  })
}

export function unixAttestor(opts: UnixAttestorOptions = {}): WorkloadAttestor {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  const passwdFile = opts.passwdFile ?? '/etc/passwd'
  const groupFile = opts.groupFile ?? '/etc/group'
  const sizeLimit = opts.workloadSizeLimit ?? 0
  return {
    kind: 'WorkloadAttestor',
    name: 'unix',
    async attest(peer: PeerInfo, signal?: AbortSignal): Promise<Selector[]> {
      const dir = join(procRoot, String(peer.pid))
      let status: ReturnType<typeof parseProcStatus>
      try {
        status = parseProcStatus(await readFile(join(dir, 'status'), 'utf8'))
      } catch (err) {
        throw new WorkloadAttestationError(`unix: cannot read status of pid ${peer.pid}`, err)
      }
      const [users, groups] = await Promise.all([names(passwdFile), names(groupFile)])
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
      if (opts.discoverWorkloadPath) {
        const exe = join(dir, 'exe')
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
          try {
            const size = (await stat(exe)).size
            if (sizeLimit > 0 && size > sizeLimit) {
              throw new WorkloadAttestationError(
                `unix: workload ${path} exceeds the size limit (${size} > ${sizeLimit} bytes)`,
              )
            }
            add(`sha256:${await sha256File(exe, signal)}`)
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
