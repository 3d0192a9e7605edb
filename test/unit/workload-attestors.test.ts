import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { dockerAttestor } from '../../src/agent/workload-api/attestors/docker.js'
import {
  dockerContainerIdFromCgroups,
  parseCgroups,
  parseIdNames,
  parseProcStatus,
  systemdUnitFromCgroups,
} from '../../src/agent/workload-api/attestors/proc-parse.js'
import { systemdAttestor } from '../../src/agent/workload-api/attestors/systemd.js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { parseStatStartTime, stampMismatch } from '../../src/agent/workload-api/proc.js'

const root = mkdtempSync(join(tmpdir(), 'wl-attest-'))
after(() => rmSync(root, { recursive: true, force: true }))

const STATUS = `Name:\tnginx
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Pid:\t4242
PPid:\t1
Uid:\t1000\t1001\t1001\t1001
Gid:\t2000\t2001\t2001\t2001
FDSize:\t64
Groups:\t2001 3000 3001 
NStgid:\t4242
`

const PASSWD = `root:x:0:0:root:/root:/bin/bash
# comment
web:x:1001:2001::/home/web:/bin/sh
dup:x:1001:2001::/:/bin/sh
`
const GROUP = `root:x:0:
web:x:2001:
video:x:3000:web
`

const DOCKER_ID = `${'a'.repeat(40)}0123456789abcdef01234567`

/** A fake /proc/<pid> with the given files. */
function fakeProc(pid: number, files: Record<string, string>): string {
  const proc = mkdtempSync(join(root, 'proc-'))
  const dir = join(proc, String(pid))
  mkdirSync(dir, { recursive: true })
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  return proc
}

const peer = (pid: number) => ({ pid, uid: 1001, gid: 2001 })
const values = (s: { type: string; value: string }[]) => s.map((x) => `${x.type}:${x.value}`)

describe('/proc parsing', () => {
  test('status: effective uid/gid and supplementary groups', () => {
    assert.deepEqual(parseProcStatus(STATUS), { uid: 1001, gid: 2001, groups: [2001, 3000, 3001] })
    assert.deepEqual(parseProcStatus('Uid:\t5\nGid:\t6\n'), { uid: 5, gid: 6, groups: [] })
    assert.throws(() => parseProcStatus('Gid:\t1 1 1 1\n'), /no Uid/)
    assert.throws(() => parseProcStatus('Uid:\tx\nGid:\t1\n'), /malformed Uid/)
    // Only a line's start names a field: text after it (a comm, escaped by the kernel) does not.
    const tricky = 'Name:\tx Uid:\t0 Groups:\t0\nUid:\t7 8 8 8\nGid:\t9 9 9 9\nGroups:\t10\n'
    assert.deepEqual(parseProcStatus(tricky), { uid: 8, gid: 9, groups: [10] })
    assert.deepEqual(parseProcStatus('Uid:\t1\nGid:\t2'), { uid: 1, gid: 2, groups: [] })
    assert.throws(() => parseProcStatus('Name:\tUid:\t0\nGid:\t1\n'), /no Uid/)
  })

  test('passwd/group names: first entry wins, comments skipped', () => {
    const users = parseIdNames(PASSWD)
    assert.equal(users.get(1001), 'web')
    assert.equal(users.get(0), 'root')
    assert.equal(parseIdNames(GROUP).get(3000), 'video')
  })

  test('stat start time survives a comm with spaces and parentheses', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3))
    const stat = `77 (a (b) c) ${fields.join(' ')}\n`
    assert.equal(parseStatStartTime(stat), '22')
    assert.throws(() => parseStatStartTime('77 no-paren'), /comm/)
    const a = { startTime: '1', uid: 1, gid: 1, exe: '2049:77' }
    assert.equal(stampMismatch(a, { ...a }), undefined)
    assert.match(stampMismatch(a, { ...a, exe: '2049:78' }) ?? '', /exec/)
    assert.match(stampMismatch(a, { ...a, exe: undefined }) ?? '', /exec/)
    assert.match(stampMismatch(a, { ...a, startTime: '2' }) ?? '', /pid reused/)
    assert.match(stampMismatch(a, { ...a, uid: 0 }) ?? '', /owner/)
  })

  test('cgroups: systemd unit (v2 and v1) and docker container id', () => {
    const v2 = parseCgroups('0::/system.slice/nginx.service\n')
    assert.equal(systemdUnitFromCgroups(v2), 'nginx.service')
    const v1 = parseCgroups(
      '12:pids:/user.slice\n1:name=systemd:/user.slice/user-0.slice/session-3.scope\n',
    )
    assert.equal(systemdUnitFromCgroups(v1), 'session-3.scope')
    assert.equal(systemdUnitFromCgroups(parseCgroups('0::/\n')), undefined)
    const nested = parseCgroups(`0::/system.slice/docker-${DOCKER_ID}.scope\n`)
    assert.equal(systemdUnitFromCgroups(nested), `docker-${DOCKER_ID}.scope`)
    assert.equal(dockerContainerIdFromCgroups(nested), DOCKER_ID)
    assert.equal(
      dockerContainerIdFromCgroups(parseCgroups(`4:memory:/docker/${DOCKER_ID}\n`)),
      DOCKER_ID,
    )
    assert.equal(dockerContainerIdFromCgroups(parseCgroups('0::/docker/short\n')), undefined)
    assert.equal(dockerContainerIdFromCgroups(v2), undefined)
  })
})

describe('workload attestors', () => {
  test('unix: ids and names from fixtures', async () => {
    const procRoot = fakeProc(4242, { status: STATUS })
    const passwdFile = join(procRoot, 'passwd')
    const groupFile = join(procRoot, 'group')
    writeFileSync(passwdFile, PASSWD)
    writeFileSync(groupFile, GROUP)
    const a = unixAttestor({ procRoot, passwdFile, groupFile })
    assert.equal(a.name, 'unix')
    assert.deepEqual(values(await a.attest(peer(4242))), [
      'unix:uid:1001',
      'unix:user:web',
      'unix:gid:2001',
      'unix:group:web',
      'unix:supplementary_gid:2001',
      'unix:supplementary_group:web',
      'unix:supplementary_gid:3000',
      'unix:supplementary_group:video',
      'unix:supplementary_gid:3001',
    ])
    await assert.rejects(a.attest(peer(999)), { code: 'ERR_WORKLOAD_ATTESTATION' })
  })

  test('unix: uid and gid come from the connect-time credentials, not from /proc now', async () => {
    // The caller connected as 1001 and then exec'd a setuid-root binary: /proc says uid 0.
    const procRoot = fakeProc(4243, {
      status: STATUS.replace(/^Uid:.*$/m, 'Uid:\t1001\t0\t0\t0').replace(
        /^Gid:.*$/m,
        'Gid:\t2001\t0\t0\t0',
      ),
    })
    const a = unixAttestor({ procRoot, passwdFile: '/nonexistent', groupFile: '/nonexistent' })
    const v = values(await a.attest(peer(4243)))
    assert.ok(v.includes('unix:uid:1001') && v.includes('unix:gid:2001'), v.join(' '))
    assert.ok(!v.includes('unix:uid:0') && !v.includes('unix:gid:0'), v.join(' '))
  })

  test('unix: discoverWorkloadPath adds path and sha256, honouring the size limit', async () => {
    const procRoot = fakeProc(7, { status: STATUS })
    const bin = join(procRoot, 'workload-bin')
    writeFileSync(bin, 'hello workload')
    symlinkSync(bin, join(procRoot, '7', 'exe'))
    const opts = { procRoot, passwdFile: '/nonexistent', groupFile: '/nonexistent' }
    const sha = createHash('sha256').update('hello workload').digest('hex')
    const all = values(await unixAttestor({ ...opts, discoverWorkloadPath: true }).attest(peer(7)))
    assert.ok(all.includes(`unix:path:${bin}`))
    assert.ok(all.includes(`unix:sha256:${sha}`))
    assert.ok(!all.some((v) => v.startsWith('unix:user:'))) // no passwd: ids only
    const noHash = values(
      await unixAttestor({ ...opts, discoverWorkloadPath: true, workloadSizeLimit: -1 }).attest(
        peer(7),
      ),
    )
    assert.ok(noHash.includes(`unix:path:${bin}`))
    assert.ok(!noHash.some((v) => v.startsWith('unix:sha256:')))
    await assert.rejects(
      unixAttestor({ ...opts, discoverWorkloadPath: true, workloadSizeLimit: 3 }).attest(peer(7)),
      { code: 'ERR_WORKLOAD_ATTESTATION' },
    )
  })

  test('systemd: unit id, or nothing outside a unit', async () => {
    const a = systemdAttestor({
      procRoot: fakeProc(5, { cgroup: '0::/system.slice/db.service\n' }),
    })
    assert.deepEqual(await a.attest(peer(5)), [{ type: 'systemd', value: 'id:db.service' }])
    const none = systemdAttestor({ procRoot: fakeProc(5, { cgroup: '0::/\n' }) })
    assert.deepEqual(await none.attest(peer(5)), [])
  })

  test('docker: not in a container → no selectors; container without API → container_id', async () => {
    const outside = dockerAttestor({
      procRoot: fakeProc(9, { cgroup: '0::/user.slice/x.scope\n' }),
      socketPath: join(root, 'no-docker.sock'),
    })
    assert.deepEqual(await outside.attest(peer(9)), [])
    const inside = dockerAttestor({
      procRoot: fakeProc(9, { cgroup: `0::/system.slice/docker-${DOCKER_ID}.scope\n` }),
      socketPath: join(root, 'no-docker.sock'),
    })
    assert.deepEqual(values(await inside.attest(peer(9))), [`docker:container_id:${DOCKER_ID}`])
  })

  test('docker: labels and image from the Engine API over its unix socket', async () => {
    const sock = join(root, 'docker.sock')
    const paths: string[] = []
    const api = createServer((req, res) => {
      paths.push(req.url ?? '')
      res.setHeader('content-type', 'application/json')
      res.end(
        JSON.stringify({
          Id: DOCKER_ID,
          Config: { Image: 'nginx:1.27', Labels: { 'com.example.app': 'web', tier: 'front' } },
        }),
      )
    })
    await new Promise<void>((r) => api.listen(sock, r))
    try {
      const a = dockerAttestor({
        procRoot: fakeProc(9, { cgroup: `4:memory:/docker/${DOCKER_ID}\n` }),
        socketPath: `unix://${sock}`,
      })
      assert.deepEqual(values(await a.attest(peer(9))), [
        `docker:container_id:${DOCKER_ID}`,
        'docker:label:com.example.app:web',
        'docker:label:tier:front',
        'docker:image_id:nginx:1.27',
      ])
      assert.deepEqual(paths, [`/containers/${DOCKER_ID}/json`])
    } finally {
      await new Promise((r) => api.close(r))
    }
  })
})
