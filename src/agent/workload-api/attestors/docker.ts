/**
 * The docker workload attestor: the caller's container id from its cgroups, then labels and
 * image from the Docker Engine API over its unix socket. A caller outside any container gets no
 * selectors (not an error); a container we cannot inspect still gets container_id.
 */
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { WorkloadAttestationError } from '../errors.js'
import { DEFAULT_PROC_ROOT } from '../proc.js'
import type { PeerInfo, Selector, WorkloadAttestor } from '../types.js'
import { dockerContainerIdFromCgroups, parseCgroups } from './proc-parse.js'

export interface DockerAttestorOptions {
  /** Docker Engine API socket; default /var/run/docker.sock (a unix:// prefix is accepted). */
  readonly socketPath?: string
  readonly procRoot?: string
  /** Docker API call timeout, ms; default 5000. */
  readonly timeoutMs?: number
}

interface ContainerJson {
  Config?: { Labels?: Record<string, string> | null; Image?: string }
}

function inspect(
  socketPath: string,
  id: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<ContainerJson> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path: `/containers/${id}/json`,
        method: 'GET',
        timeout: timeoutMs,
        ...(signal ? { signal } : {}),
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          if (res.statusCode !== 200) {
            reject(new Error(`docker API answered ${res.statusCode} for container ${id}`))
            return
          }
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as ContainerJson)
          } catch (err) {
            reject(err)
          }
        })
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error('docker API timed out')))
    req.on('error', reject)
    req.end()
  })
}

export function dockerAttestor(opts: DockerAttestorOptions = {}): WorkloadAttestor {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  const socketPath = (opts.socketPath ?? '/var/run/docker.sock').replace(/^unix:\/\//, '')
  const timeoutMs = opts.timeoutMs ?? 5000
  return {
    kind: 'WorkloadAttestor',
    name: 'docker',
    async attest(peer: PeerInfo, signal?: AbortSignal): Promise<Selector[]> {
      let text: string
      try {
        text = await readFile(join(procRoot, String(peer.pid), 'cgroup'), 'utf8')
      } catch (err) {
        throw new WorkloadAttestationError(`docker: cannot read cgroups of pid ${peer.pid}`, err)
      }
      const id = dockerContainerIdFromCgroups(parseCgroups(text))
      if (id === undefined) return []
      const sel: Selector[] = [{ type: 'docker', value: `container_id:${id}` }]
      if (!existsSync(socketPath)) return sel
      let info: ContainerJson
      try {
        info = await inspect(socketPath, id, timeoutMs, signal)
      } catch (err) {
        throw new WorkloadAttestationError(`docker: cannot inspect container ${id}`, err)
      }
      for (const [k, v] of Object.entries(info.Config?.Labels ?? {})) {
        sel.push({ type: 'docker', value: `label:${k}:${v}` })
      }
      if (info.Config?.Image) sel.push({ type: 'docker', value: `image_id:${info.Config.Image}` })
      return sel
    },
  }
}
