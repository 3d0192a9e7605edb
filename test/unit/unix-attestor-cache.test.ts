import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { SETTLE_MS } from '../../src/agent/workload-api/attestors/unix-cache.js'
import { ProcFiles } from '../../src/agent/workload-api/proc.js'
import type { PeerInfo } from '../../src/agent/workload-api/types.js'

const root = mkdtempSync(join(tmpdir(), 'wl-unix-cache-'))
after(() => rmSync(root, { recursive: true, force: true }))

const STATUS = 'Name:\tw\nUid:\t1001\t1001\t1001\t1001\nGid:\t2001\t2001\t2001\t2001\nGroups:\t\n'
const STAT = `77 (w) S ${'1 '.repeat(18)}4242 0\n`
const sha = (s: string) => createHash('sha256').update(s).digest('hex')
const plainPeer = { pid: 77, uid: 1001, gid: 2001 }
const peer: PeerInfo = plainPeer
const values = (s: { value: string }[]) => s.map((x) => x.value)
/** Past the window in which a file is too fresh to cache (coarse kernel timestamps). */
const settle = () => sleep(SETTLE_MS + 200)

function fakeProc(): { procRoot: string; bin: string } {
  const procRoot = mkdtempSync(join(root, 'proc-'))
  mkdirSync(join(procRoot, '77'))
  writeFileSync(join(procRoot, '77', 'status'), STATUS)
  writeFileSync(join(procRoot, '77', 'stat'), STAT)
  const bin = join(procRoot, 'workload-bin')
  symlinkSync(bin, join(procRoot, '77', 'exe'))
  return { procRoot, bin }
}

describe('unix attestor caches', () => {
  test('a binary is hashed once while unchanged, again after an in-place rewrite or a rename', async () => {
    const { procRoot, bin } = fakeProc()
    writeFileSync(bin, 'version one')
    await settle()
    const a = unixAttestor({
      procRoot,
      passwdFile: '/nonexistent',
      groupFile: '/nonexistent',
      discoverWorkloadPath: true,
    })
    for (let i = 0; i < 5; i++) {
      assert.ok(values(await a.attest(peer)).includes(`sha256:${sha('version one')}`))
    }
    assert.equal(a.binariesHashed, 1, 'five calls on an unchanged binary: one read')

    // Same size, same inode, rewritten in place: mtime/ctime move, so it is read again.
    writeFileSync(bin, 'version two')
    assert.ok(values(await a.attest(peer)).includes(`sha256:${sha('version two')}`))
    assert.equal(a.binariesHashed, 2)

    // Replaced by rename (a new inode, as package managers do).
    writeFileSync(`${bin}.new`, 'version three!')
    renameSync(`${bin}.new`, bin)
    assert.ok(values(await a.attest(peer)).includes(`sha256:${sha('version three!')}`))
    await settle()
    assert.ok(values(await a.attest(peer)).includes(`sha256:${sha('version three!')}`))
    const n = a.binariesHashed
    assert.ok(values(await a.attest(peer)).includes(`sha256:${sha('version three!')}`))
    assert.equal(a.binariesHashed, n, 'settled again: served from the cache')
  })

  test('a freshly written binary is not cached (same-tick rewrites keep the timestamps)', async () => {
    const { procRoot, bin } = fakeProc()
    writeFileSync(bin, 'fresh')
    const a = unixAttestor({
      procRoot,
      passwdFile: '/nonexistent',
      groupFile: '/nonexistent',
      discoverWorkloadPath: true,
    })
    await a.attest(peer)
    await a.attest(peer)
    assert.equal(a.binariesHashed, 2, 'changed within SETTLE_MS: read on every call')
  })

  for (const through of ['by path', 'through ProcFiles (selectors memoized per status read)']) {
    test(`user and group names follow passwd and group edits (${through})`, async () => {
      const { procRoot } = fakeProc()
      const files = through === 'by path' ? undefined : ProcFiles.open(77, procRoot)
      const peer: PeerInfo = { ...plainPeer, ...(files ? { proc: files } : {}) }
      const passwdFile = join(procRoot, 'passwd')
      const groupFile = join(procRoot, 'group')
      writeFileSync(passwdFile, 'web:x:1001:2001::/:/bin/sh\n')
      writeFileSync(groupFile, 'web:x:2001:\n')
      await settle()
      const a = unixAttestor({ procRoot, passwdFile, groupFile })
      assert.deepEqual(values(await a.attest(peer)), [
        'uid:1001',
        'user:web',
        'gid:2001',
        'group:web',
      ])
      assert.deepEqual(values(await a.attest(peer)), [
        'uid:1001',
        'user:web',
        'gid:2001',
        'group:web',
      ])
      // The user is renamed in place (same size), the group file replaced by rename.
      writeFileSync(passwdFile, 'api:x:1001:2001::/:/bin/sh\n')
      writeFileSync(`${groupFile}.new`, 'backend:x:2001:\n')
      renameSync(`${groupFile}.new`, groupFile)
      assert.deepEqual(values(await a.attest(peer)), [
        'uid:1001',
        'user:api',
        'gid:2001',
        'group:backend',
      ])
      // Both settle (cached again), then only passwd changes: the group map stays the same one.
      await settle()
      assert.deepEqual(values(await a.attest(peer)), [
        'uid:1001',
        'user:api',
        'gid:2001',
        'group:backend',
      ])
      // Removed: names are gone, ids still attest.
      rmSync(passwdFile)
      assert.deepEqual(values(await a.attest(peer)), ['uid:1001', 'gid:2001', 'group:backend'])
      files?.close()
    })
  }

  test('a status change shows in the next call, also one of the same length, and back', async () => {
    const { procRoot } = fakeProc()
    const files = ProcFiles.open(77, procRoot)
    const a = unixAttestor({
      procRoot,
      passwdFile: join(procRoot, 'none'),
      groupFile: join(procRoot, 'none'),
    })
    const status = join(procRoot, '77', 'status')
    const groupsOf = async () =>
      values(await a.attest({ ...plainPeer, proc: files })).filter((v) => v.startsWith('supp'))
    try {
      assert.deepEqual(await groupsOf(), [])
      for (const [line, want] of [
        ['5', ['supplementary_gid:5']],
        ['6', ['supplementary_gid:6']],
        ['6 7', ['supplementary_gid:6', 'supplementary_gid:7']],
        ['5', ['supplementary_gid:5']],
      ] as const) {
        writeFileSync(status, STATUS.replace('Groups:\t\n', `Groups:\t${line}\n`))
        assert.deepEqual(await groupsOf(), want, line)
        assert.deepEqual(await groupsOf(), want, `${line}, again`)
      }
      // The effective uid (what the liveness stamp takes from this read) changes alike.
      writeFileSync(status, STATUS.replace('Uid:\t1001\t1001', 'Uid:\t1001\t1002'))
      assert.equal(files.statusInfo().uid, 1002)
      writeFileSync(status, STATUS.replace('Uid:\t1001\t1001', 'Uid:\t1001\t1003'))
      assert.equal(files.statusInfo().uid, 1003)
    } finally {
      files.close()
    }
  })
})
