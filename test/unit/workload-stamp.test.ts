/**
 * The liveness stamp's ids come from /proc/<pid>/status (the effective uid/gid), and within an
 * attestation from the unix attestor's own status read: a real caller process (a Python child,
 * so it can seteuid, setgroups and prctl) changes its ids between calls and must be refused,
 * whether or not an attestor read status in that attestation. Needs root (skipped otherwise).
 */
import assert from 'node:assert/strict'
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process'
import { once } from 'node:events'
import { describe, test } from 'node:test'
import type * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { ConnTable } from '../../src/agent/workload-api/endpoint.js'
import { GrpcStatus, WorkloadStatusError } from '../../src/agent/workload-api/errors.js'
import { middleware } from '../../src/agent/workload-api/middleware.js'
import { ProcFiles, procStampSync } from '../../src/agent/workload-api/proc.js'
import type { WorkloadAttestor } from '../../src/agent/workload-api/types.js'
import { silentLog } from '../../src/common/log.js'

const CHILD = `
import ctypes, os, sys
libc = ctypes.CDLL(None)
print('ready', flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == 'euid': os.seteuid(int(a[0]))
    elif cmd == 'egid': os.setegid(int(a[0]))
    elif cmd == 'groups': os.setgroups([int(x) for x in a])
    elif cmd == 'nodump': libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    print('ok', flush=True)
`

const root = process.getuid?.() === 0
const NOBODY = 65534

/** A caller process driven over stdin; `run` waits for its answer. */
async function caller(opts: { uid?: number; gid?: number } = {}) {
  const child: ChildProcessWithoutNullStreams = spawn('python3', ['-c', CHILD], opts)
  const lines: string[] = []
  let wake: (() => void) | undefined
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    lines.push(...d.split('\n').filter(Boolean))
    wake?.()
  })
  const next = async () => {
    while (lines.length === 0) await new Promise<void>((r) => (wake = r))
    return lines.shift()
  }
  assert.equal(await next(), 'ready')
  return {
    pid: child.pid!,
    run: async (cmd: string) => {
      child.stdin.write(`${cmd}\n`)
      assert.equal(await next(), 'ok')
    },
    stop: async () => {
      child.kill()
      if (child.exitCode === null) await once(child, 'exit')
    },
  }
}

/** The caller registered as a connection, as the endpoint does at accept. */
function connect(pid: number, attestors: readonly WorkloadAttestor[]) {
  const proc = ProcFiles.open(pid)
  const conns = new ConnTable(silentLog)
  const id = conns.add({ pid, uid: 0, gid: 0, proc }, procStampSync(pid, '/proc', proc))
  const mw = middleware({
    conns,
    attestors,
    procRoot: '/proc',
    attestTimeoutMs: 5000,
    log: silentLog,
  })
  const call = { getPeer: () => id } as unknown as grpc.ServerUnaryCall<Uint8Array, Uint8Array>
  return {
    attest: () => mw.attest(call, new AbortController().signal),
    close: () => proc.close(),
  }
}

const refused = (err: unknown) =>
  err instanceof WorkloadStatusError &&
  err.status === GrpcStatus.UNAUTHENTICATED &&
  /owner changed/.test(err.message)

/** Reads nothing: the stamp must then read status itself, not reuse an earlier attestation's. */
const blind: WorkloadAttestor = {
  kind: 'WorkloadAttestor',
  name: 'blind',
  ignoresSignal: true,
  attest: async () => [],
}

describe('liveness stamp ids', { skip: !root && 'needs root (seteuid in the caller)' }, () => {
  // The ids /proc/<pid> is owned by (what the stamp used before): status's effective ids,
  // even once the caller is non-dumpable (its files inside /proc/<pid> then become root's).
  test('are the effective ids, also for a non-dumpable caller', async () => {
    const c = await caller({ uid: NOBODY, gid: NOBODY })
    try {
      await c.run('nodump')
      const files = ProcFiles.open(c.pid)
      try {
        for (const st of [procStampSync(c.pid), procStampSync(c.pid, '/proc', files)]) {
          assert.equal(st.uid, NOBODY)
          assert.equal(st.gid, NOBODY)
        }
      } finally {
        files.close()
      }
    } finally {
      await c.stop()
    }
  })

  for (const [name, attestors] of [
    ['the unix attestor', [unixAttestor()]],
    ['no attestor reading status', [blind]],
    ['both', [blind, unixAttestor()]],
  ] as const) {
    test(`a caller that changes its effective uid or gid between calls is refused (${name})`, async () => {
      const c = await caller()
      const conn = connect(c.pid, attestors)
      try {
        await conn.attest()
        await c.run(`euid ${NOBODY}`)
        await assert.rejects(conn.attest(), refused)
        await assert.rejects(conn.attest(), refused)
        await c.run('euid 0')
        await conn.attest()
        await c.run(`egid ${NOBODY}`)
        await assert.rejects(conn.attest(), refused)
        await c.run('egid 0')
        await conn.attest()
      } finally {
        conn.close()
        await c.stop()
      }
    })
  }

  test('supplementary groups changed between calls show in the next attestation', async () => {
    const c = await caller()
    const conn = connect(c.pid, [unixAttestor()])
    const gids = async () =>
      (await conn.attest())
        .map((s) => s.value)
        .filter((v) => v.startsWith('supplementary_gid:'))
        .sort()
    try {
      await c.run('groups 4242')
      assert.deepEqual(await gids(), ['supplementary_gid:4242'])
      await c.run('groups 4243 4244')
      assert.deepEqual(await gids(), ['supplementary_gid:4243', 'supplementary_gid:4244'])
    } finally {
      conn.close()
      await c.stop()
    }
  })
})
