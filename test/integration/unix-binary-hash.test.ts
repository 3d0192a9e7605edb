/**
 * The unix attestor's binary hash cache against real processes and their /proc/<pid>/exe: a
 * binary replaced on disk (in place, or by rename) is hashed again for the processes that run
 * the new one, while a process still running the old inode keeps the old hash.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFileSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { SETTLE_MS } from '../../src/agent/workload-api/attestors/unix-cache.js'

const dir = mkdtempSync(join(tmpdir(), 'wl-binhash-'))
const children: ChildProcess[] = []
after(() => {
  for (const c of children) c.kill('SIGKILL')
  rmSync(dir, { recursive: true, force: true })
})

const fileSha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')

/** sleep 60, or with tail's binary tail -f /dev/null: both just wait. */
async function run(bin: string, args = ['60']): Promise<ChildProcess> {
  const c = spawn(bin, args, { stdio: 'ignore' })
  children.push(c)
  await new Promise<void>((resolve, reject) => {
    c.once('spawn', () => resolve())
    c.once('error', reject)
  })
  return c
}

async function hashOf(a: ReturnType<typeof unixAttestor>, c: ChildProcess): Promise<string> {
  const sel = await a.attest({ pid: c.pid!, uid: process.getuid!(), gid: process.getgid!() })
  const v = sel.find((s) => s.value.startsWith('sha256:'))?.value
  assert.ok(v, 'a sha256 selector')
  return v.slice('sha256:'.length)
}

test('a workload binary replaced on disk is hashed again; the running old one keeps its hash', async () => {
  const bin = join(dir, 'workload')
  copyFileSync('/bin/sleep', bin)
  await sleep(SETTLE_MS + 200) // old enough to be cached
  const a = unixAttestor({ discoverWorkloadPath: true })
  const first = await run(bin)
  const sleepSha = fileSha('/bin/sleep')
  assert.equal(await hashOf(a, first), sleepSha)
  assert.equal(await hashOf(a, first), sleepSha)
  assert.equal(a.binariesHashed, 1, 'unchanged: hashed once')

  // Replaced by rename while `first` still runs the old inode.
  copyFileSync('/usr/bin/tail', `${bin}.new`)
  renameSync(`${bin}.new`, bin)
  const second = await run(bin, ['-f', '/dev/null'])
  const tailSha = fileSha('/usr/bin/tail')
  assert.notEqual(tailSha, sleepSha)
  assert.equal(await hashOf(a, second), tailSha)
  assert.equal(await hashOf(a, first), sleepSha, 'the old process still runs the old binary')

  // Rewritten in place once nothing runs it (a running binary cannot be written: ETXTBSY).
  first.kill('SIGKILL')
  second.kill('SIGKILL')
  await sleep(100)
  copyFileSync('/bin/sleep', bin) // copyFile truncates and writes the same inode
  const third = await run(bin)
  const before = a.binariesHashed
  assert.equal(await hashOf(a, third), sleepSha)
  assert.ok(a.binariesHashed > before, 'rewritten in place: hashed again, not served from cache')
})
