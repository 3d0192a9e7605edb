/**
 * The systemd workload attestor: the caller's unit, read from its cgroup path rather than over
 * D-Bus (SPIRE asks systemd's GetUnitByPID; the cgroup path is where systemd keeps the same
 * answer, and reading it needs neither a bus connection nor a library).
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { WorkloadAttestationError } from '../errors.js'
import { DEFAULT_PROC_ROOT } from '../proc.js'
import type { PeerInfo, Selector, WorkloadAttestor } from '../types.js'
import { parseCgroups, systemdUnitFromCgroups } from './proc-parse.js'

export interface SystemdAttestorOptions {
  readonly procRoot?: string
}

export function systemdAttestor(opts: SystemdAttestorOptions = {}): WorkloadAttestor {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT
  return {
    kind: 'WorkloadAttestor',
    name: 'systemd',
    ignoresSignal: true,
    async attest(peer: PeerInfo): Promise<Selector[]> {
      let text: string
      try {
        text = await readFile(join(procRoot, String(peer.pid), 'cgroup'), 'utf8')
      } catch (err) {
        throw new WorkloadAttestationError(`systemd: cannot read cgroups of pid ${peer.pid}`, err)
      }
      const unit = systemdUnitFromCgroups(parseCgroups(text))
      return unit === undefined ? [] : [{ type: 'systemd', value: `id:${unit}` }]
    },
  }
}
