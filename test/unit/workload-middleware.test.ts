/**
 * The Workload API middleware's attestation, driven directly (no socket) so races are
 * deterministic: one controller per batch serves both the callers leaving and the deadline, and
 * neither may change what a caller is told; the liveness check (PID reuse, exec) still runs on
 * every attestation. The caller is this test process, read from the real /proc.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import type * as grpc from '@grpc/grpc-js'
import { parseProcStatus } from '../../src/agent/workload-api/attestors/proc-parse.js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { ConnTable } from '../../src/agent/workload-api/endpoint.js'
import { GrpcStatus, WorkloadStatusError } from '../../src/agent/workload-api/errors.js'
import { middleware } from '../../src/agent/workload-api/middleware.js'
import {
  ProcFiles,
  type ProcStamp,
  parseStatStartTime,
  procStampSync,
} from '../../src/agent/workload-api/proc.js'
import type { WorkloadAttestor } from '../../src/agent/workload-api/types.js'
import { silentLog } from '../../src/common/log.js'

const me = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() }

function setup(attestors: readonly WorkloadAttestor[], stamp?: Partial<ProcStamp>, ms = 5000) {
  const conns = new ConnTable(silentLog)
  const id = conns.add(me, { ...procStampSync(me.pid), ...stamp })
  const mw = middleware({
    conns,
    attestors,
    procRoot: '/proc',
    attestTimeoutMs: ms,
    log: silentLog,
  })
  const call = { getPeer: () => id } as unknown as grpc.ServerUnaryCall<Uint8Array, Uint8Array>
  return { attest: (signal: AbortSignal) => mw.attest(call, signal) }
}

const statusIs = (status: number, message: RegExp) => (err: unknown) =>
  err instanceof WorkloadStatusError && err.status === status && message.test(err.message)

describe('workload attestation in the middleware', () => {
  test('a call arriving after every caller of a batch left is attested, not failed with their reason', async () => {
    let runs = 0
    const unix = unixAttestor()
    const counted: WorkloadAttestor = {
      kind: 'WorkloadAttestor',
      name: 'unix',
      attest: (p, s) => {
        runs++
        return unix.attest(p, s)
      },
    }
    const { attest } = setup([counted])
    const gone = new AbortController()
    const first = attest(gone.signal)
    gone.abort(new Error('the first caller left'))
    // Same turn, same connection: the abandoned batch has not started yet.
    const second = attest(new AbortController().signal)
    await assert.rejects(first, /the first caller left/)
    const sel = await second
    assert.ok(
      sel.some((s) => s.value === `uid:${me.uid}`),
      JSON.stringify(sel),
    )
    assert.equal(runs, 1, 'the abandoned batch attested nobody')
  })

  test('an attestor past the deadline fails the call as UNAVAILABLE (fail closed)', async () => {
    const stuck: WorkloadAttestor = {
      kind: 'WorkloadAttestor',
      name: 'stuck',
      attest: () => new Promise(() => undefined),
    }
    const { attest } = setup([stuck], {}, 50)
    await assert.rejects(
      attest(new AbortController().signal),
      statusIs(GrpcStatus.UNAVAILABLE, /workload attestation failed/),
    )
  })

  test('a pid now run by another process (start time changed) is refused', async () => {
    const { attest } = setup([unixAttestor()], { startTime: '1' })
    await assert.rejects(
      attest(new AbortController().signal),
      statusIs(GrpcStatus.UNAUTHENTICATED, /pid reused/),
    )
  })

  test('a process that exec()ed since it connected is refused', async () => {
    const { attest } = setup([unixAttestor()], { exe: '0:0' })
    await assert.rejects(
      attest(new AbortController().signal),
      statusIs(GrpcStatus.UNAUTHENTICATED, /executable changed/),
    )
  })
})

const startOf = (pid: number) => parseStatStartTime(readFileSync(`/proc/${pid}/stat`, 'utf8'))
const exited = (c: ChildProcess) => new Promise((r) => c.once('exit', r))

describe("ProcFiles: the caller's /proc files opened at connect", () => {
  test('stay bound to the process that connected when its pid names another one', async () => {
    // A fake proc root whose <pid> entry is re-pointed from process A to process B: what a
    // reused pid looks like to a path-based read.
    const root = mkdtempSync(join(tmpdir(), 'procfiles-'))
    const a = spawn('sleep', ['30'])
    const b = spawn('sleep', ['30'])
    try {
      await new Promise((r) => setTimeout(r, 50))
      const link = join(root, '4242')
      symlinkSync(`/proc/${a.pid}`, link)
      const files = ProcFiles.open(4242, root)
      assert.equal(parseStatStartTime(files.stat()), startOf(a.pid!))
      assert.match(files.status(), new RegExp(`^Pid:\\s+${a.pid}$`, 'm'))
      unlinkSync(link)
      symlinkSync(`/proc/${b.pid}`, link)
      // By path the pid is now B; through the files it is still A.
      assert.equal(procStampSync(4242, root).startTime, startOf(b.pid!))
      assert.equal(procStampSync(4242, root, files).startTime, startOf(a.pid!))
      assert.match(files.status(), new RegExp(`^Pid:\\s+${a.pid}$`, 'm'))
      // A gone: reads fail, whoever the pid names (fail closed, not B's state).
      a.kill()
      await exited(a)
      assert.throws(() => files.stat(), /ESRCH/)
      assert.throws(() => files.status(), /ESRCH/)
      assert.throws(() => procStampSync(4242, root, files), /ESRCH/)
      files.close()
      assert.throws(() => files.stat(), /closed/)
    } finally {
      a.kill()
      b.kill()
      rmSync(root, { recursive: true, force: true })
    }
  })

  test('read fresh state on every call', () => {
    const files = ProcFiles.open(process.pid)
    try {
      const cpu = () =>
        Number(
          files
            .stat()
            .slice(files.stat().lastIndexOf(')') + 2)
            .split(' ')[11],
        )
      const before = cpu()
      // Burn CPU until utime moves (clock ticks; a loaded machine may take a while): stale
      // reads would never see it move.
      const until = Date.now() + 5000
      let now = before
      while (now === before && Date.now() < until) now = cpu()
      assert.ok(now > before, 'utime read through the held file advanced')
    } finally {
      files.close()
    }
  })

  test('startTime() and statusIds() read what the text parsers read from the whole file', async () => {
    // A comm with spaces and parentheses (the binary's name), so the ")" scan is exercised.
    const dir = mkdtempSync(join(tmpdir(), 'procfiles-'))
    const bin = join(dir, 'a (b) c')
    symlinkSync('/bin/sleep', bin)
    const child = spawn(bin, ['30'])
    try {
      await new Promise((r) => setTimeout(r, 100))
      const files = ProcFiles.open(child.pid!)
      for (const pid of [child.pid!, process.pid]) {
        const f = pid === child.pid ? files : ProcFiles.open(pid)
        assert.equal(f.startTime(), startOf(pid))
        assert.deepEqual(
          parseProcStatus(f.statusIds()),
          parseProcStatus(readFileSync(`/proc/${pid}/status`, 'utf8')),
        )
        // Only the three lines, each from a line start.
        assert.match(f.statusIds(), /^Uid:[^\n]*\nGid:[^\n]*\n(Groups:[^\n]*\n)?$/)
        if (f !== files) f.close()
      }
      assert.match(readFileSync(`/proc/${child.pid}/stat`, 'utf8'), /\(a \(b\) c\)/)
      child.kill()
      await exited(child)
      assert.throws(() => files.startTime(), /ESRCH/)
      assert.throws(() => files.statusIds(), /ESRCH/)
      files.close()
    } finally {
      child.kill()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
