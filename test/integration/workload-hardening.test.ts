import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import { GrpcStatus } from '../../src/agent/workload-api/errors.js'
import { workloadCodec } from '../../src/agent/workload-api/proto.js'
import {
  startWorkloadApi,
  type WorkloadApiServerOptions,
} from '../../src/agent/workload-api/server.js'
import { JWT_AUDIENCE_LIMITS } from '../../src/agent/workload-api/types.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { repoRoot } from '../helpers/exec.js'
import { reflect } from '../helpers/reflection.js'
import { MemoryWorkloadSource, sel } from '../helpers/workload-source.js'

const UID = process.getuid!()
const root = mkdtempSync(join(tmpdir(), 'wl-hard-'))
chmodSync(root, 0o755)
after(() => rmSync(root, { recursive: true, force: true }))
let n = 0

async function serve(socketPath: string, over: Partial<WorkloadApiServerOptions> = {}) {
  const source = await MemoryWorkloadSource.create()
  const server = await startWorkloadApi({
    socketPath,
    source,
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
    ...over,
  })
  return { source, server }
}

/** Starts a server where it must be refused; one that starts anyway is closed (no hung test). */
async function refused(socketPath: string): Promise<never> {
  const s = await serve(socketPath)
  await s.server.close()
  throw new Error(`the server started on ${socketPath}`)
}

/** A raw unary call with hand-made request bytes; resolves with the status. */
function rawUnary(socket: string, path: string, body: Buffer): Promise<grpc.StatusObject> {
  const c = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure())
  const md = new grpc.Metadata()
  md.set('workload.spiffe.io', 'true')
  return new Promise((resolve) => {
    const call = c.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      md,
      () => undefined,
    )
    call.on('status', (s) => {
      c.close()
      resolve(s)
    })
  })
}

describe('Workload API hardening', () => {
  test('socket directory: refused when owned by another uid, writable by others, or a symlink', {
    skip: UID !== 0 ? 'needs root to chown to 65534' : false,
  }, async () => {
    // Owned by another user: they could swap the socket later.
    const foreign = join(root, `foreign${++n}`)
    mkdirSync(foreign, { mode: 0o755 })
    chownSync(foreign, 65534, 65534)
    await assert.rejects(refused(join(foreign, 'api.sock')), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_WORKLOAD_ENDPOINT')
      assert.match(err.message, /owned by uid 65534/)
      return true
    })
    // A parent pre-created by another user is refused too, even if the socket dir is ours.
    const sub = join(foreign, 'public')
    mkdirSync(sub, { mode: 0o755 })
    await assert.rejects(refused(join(sub, 'api.sock')), /owned by uid 65534/)
    // World-writable (0777), ours.
    const open = join(root, `open${++n}`)
    mkdirSync(open)
    chmodSync(open, 0o777)
    await assert.rejects(refused(join(open, 'api.sock')), (err: Error & { remedy?: string }) => {
      assert.match(err.message, /writable by group or others \(mode 777\)/)
      assert.match(err.remedy ?? '', /another local user could replace/)
      return true
    })
    // Sticky and world-writable is fine for an ancestor (like /tmp), never for the socket dir.
    const sticky = join(root, `sticky${++n}`)
    mkdirSync(sticky)
    chmodSync(sticky, 0o1777)
    await assert.rejects(refused(join(sticky, 'api.sock')), /writable by group or others/)
    const s = await serve(join(sticky, 'agent', 'public', 'api.sock'))
    await s.server.close()
    // The socket directory may not be a symlink (to a good directory or not).
    const good = join(root, `good${++n}`)
    mkdirSync(good, { mode: 0o755 })
    const link = join(root, `link${++n}`)
    symlinkSync(good, link)
    await assert.rejects(refused(join(link, 'api.sock')), /symbolic link/)
    // Nothing was created in the refused places.
    assert.throws(() => execFileSync('ls', [join(foreign, 'api.sock')], { stdio: 'ignore' }))
  })

  test('socket directory: created 0755 component by component when missing', async () => {
    const base = join(root, `fresh${++n}`)
    const old = process.umask(0o077)
    try {
      const s = await serve(join(base, 'a', 'b', 'api.sock'))
      await s.server.close()
    } finally {
      process.umask(old)
    }
    for (const d of [base, join(base, 'a'), join(base, 'a', 'b')]) {
      assert.equal(
        execFileSync('stat', ['-c', '%a', d]).toString().trim(),
        '755',
        `${d} should be 0755`,
      )
    }
  })

  test('FetchJWTSVID: too many, too long or invalid UTF-8 audiences are InvalidArgument', async () => {
    const socket = join(root, `jwt${++n}`, 'api.sock')
    const { source, server } = await serve(socket)
    await source.addEntry({
      id: 'e1',
      spiffeId: 'spiffe://example.org/web',
      selectors: [sel(`unix:uid:${UID}`)],
    })
    const client = workloadClient(`unix://${socket}`)
    try {
      const path = '/SpiffeWorkloadAPI/FetchJWTSVID'
      const enc = (audience: string[]) =>
        Buffer.from(workloadCodec.jwtSvidRequest.encode({ audience, spiffeId: '' }))
      const ok = await rawUnary(socket, path, enc(['a', 'b']))
      assert.equal(ok.code, GrpcStatus.OK, ok.details)
      const many = Array.from({ length: JWT_AUDIENCE_LIMITS.maxCount + 1 }, (_, i) => `a${i}`)
      const s1 = await rawUnary(socket, path, enc(many))
      assert.equal(s1.code, GrpcStatus.INVALID_ARGUMENT)
      assert.match(s1.details, /too many audiences/)
      const s2 = await rawUnary(socket, path, enc(['x'.repeat(900 * 1024)]))
      assert.equal(s2.code, GrpcStatus.INVALID_ARGUMENT)
      assert.match(s2.details, /bytes, more than 1024/)
      const s3 = await rawUnary(socket, path, enc(Array(10).fill('y'.repeat(1000))))
      assert.equal(s3.code, GrpcStatus.INVALID_ARGUMENT)
      assert.match(s3.details, /total/)
      // field 1 (audience), length 3: "a", 0xff, "b" is not UTF-8.
      const s4 = await rawUnary(socket, path, Buffer.from([0x0a, 3, 0x61, 0xff, 0x62]))
      assert.equal(s4.code, GrpcStatus.INVALID_ARGUMENT)
      assert.match(s4.details, /not valid UTF-8/)
      // The same for ValidateJWTSVID's audience (field 1) and the requested spiffe_id (field 2).
      const s5 = await rawUnary(
        socket,
        '/SpiffeWorkloadAPI/ValidateJWTSVID',
        Buffer.from([0x0a, 2, 0xc3, 0x28, 0x12, 1, 0x61]),
      )
      assert.equal(s5.code, GrpcStatus.INVALID_ARGUMENT)
      assert.match(s5.details, /UTF-8/)
      const s6 = await rawUnary(socket, path, Buffer.from([0x0a, 1, 0x61, 0x12, 1, 0x80]))
      assert.equal(s6.code, GrpcStatus.INVALID_ARGUMENT)
      // Valid multi-byte UTF-8 passes.
      assert.equal((await client.fetchJwt(['ünïcödé'])).length, 1)
    } finally {
      client.close()
      await server.close()
    }
  })

  test('reflection v1 and v1alpha (real file names, snake_case fields); health per service', async () => {
    const socket = join(root, `refl${++n}`, 'api.sock')
    let ready = true
    const { server } = await serve(socket, { ready: () => ready })
    const c = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure())
    try {
      for (const version of ['v1', 'v1alpha'] as const) {
        const got = await reflect(
          c,
          [
            [0x3a, '*'], // list_services
            [0x1a, 'workload.proto'], // file_by_filename
            [0x22, 'grpc.health.v1.Health'], // file_containing_symbol
          ],
          version,
        )
        assert.equal(got.length, 3, version)
        const [list, file, health] = got.map((b) => b.toString('latin1'))
        // Listed as its 17-byte name (length prefix 0x11), not with a leading dot.
        assert.ok(list!.includes('\x11SpiffeWorkloadAPI'), version)
        assert.doesNotMatch(list!, /\.SpiffeWorkloadAPI/, version)
        assert.match(list!, /grpc\.reflection\.v1\.ServerReflection/)
        assert.match(file!, /workload\.proto/)
        assert.match(file!, /google\/protobuf\/struct\.proto/) // the import, by its real path
        assert.match(file!, /spiffe_id/) // the .proto's field names, not camelCase
        assert.doesNotMatch(file!, /root\.proto/)
        assert.match(health!, /grpc\/health\/v1\/health\.proto/)
      }
      const check = (service: string) =>
        new Promise<{ code: number; status?: number }>((resolve) => {
          c.makeUnaryRequest(
            '/grpc.health.v1.Health/Check',
            (b: Buffer) => b,
            (b: Buffer) => b,
            Buffer.from(workloadCodec.healthRequest.encode({ service })),
            (err, res) => {
              if (err) return resolve({ code: err.code })
              resolve({ code: 0, status: workloadCodec.healthResponse.decode(res!).status })
            },
          )
        })
      assert.deepEqual(await check(''), { code: 0, status: 1 })
      assert.deepEqual(await check('SpiffeWorkloadAPI'), { code: 0, status: 1 })
      assert.equal((await check('nope')).code, GrpcStatus.NOT_FOUND)
      ready = false
      assert.deepEqual(await check(''), { code: 0, status: 2 }) // exact at once, no polling lag
    } finally {
      c.close()
      await server.close()
    }
  })

  test('exec after connect: the forked child is not served the new binary identity', {
    skip: !hasPython() ? 'needs python3 to fork with an inherited connection' : false,
  }, async () => {
    const socket = join(root, `exec${++n}`, 'api.sock')
    const { source, server } = await serve(socket, {
      attestors: [unixAttestor({ discoverWorkloadPath: true })],
    })
    const sleepBin = realpathSync(execFileSync('which', ['sleep']).toString().trim())
    const python = realpathSync(execFileSync('which', ['python3']).toString().trim())
    const pythonReal = realpathSync(
      execFileSync(python, ['-c', 'import sys; print(sys.executable)']).toString().trim(),
    )
    await source.addEntry({
      id: 'sleep',
      spiffeId: 'spiffe://example.org/privileged-sleep',
      selectors: [sel(`unix:path:${sleepBin}`)],
    })
    await source.addEntry({
      id: 'python',
      spiffeId: 'spiffe://example.org/python',
      selectors: [sel(`unix:path:${pythonReal}`)],
    })
    try {
      // Control: the parent stays python; the child uses the connection → python's identity.
      const control = await forkWithConnection(python, socket, 'stay', pythonReal)
      assert.deepEqual(control, { status: 0, ids: ['spiffe://example.org/python'] })
      // The parent execs sleep after connecting: the child must not get sleep's identity.
      const attack = await forkWithConnection(python, socket, 'exec', sleepBin)
      assert.equal(attack.status, GrpcStatus.UNAUTHENTICATED, JSON.stringify(attack))
      assert.deepEqual(attack.ids, [])
    } finally {
      await server.close()
    }
  })
})

function hasPython(): boolean {
  try {
    execFileSync('python3', ['-c', 'pass'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/**
 * python connects, waits for the agent to accept, forks: the child becomes our fd helper, the
 * parent either execs `sleep` ('exec') or stays python and sleeps ('stay').
 */
function forkWithConnection(
  python: string,
  socket: string,
  mode: 'exec' | 'stay',
  parentExe: string,
): Promise<{ status: number; ids: string[] }> {
  const helper = join(repoRoot, 'dist', 'test', 'helpers', 'workload-fd-child.js')
  const script = join(root, `fork${++n}.py`)
  writeFileSync(
    script,
    [
      'import os, socket, sys, time',
      'sock_path, node, helper, mode, target = sys.argv[1:6]',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
      's.connect(sock_path)',
      'time.sleep(0.3)',
      'if os.fork() == 0:',
      '    os.dup2(s.fileno(), 20)',
      "    os.execv(node, [node, helper, '20', str(os.getppid()), target])",
      "if mode == 'exec':",
      "    os.execv(target, [target, '4'])",
      'time.sleep(4)',
    ].join('\n'),
  )
  return new Promise((resolve, reject) => {
    const p = spawn(python, [script, socket, process.execPath, helper, mode, parentExe], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      const line = out.split('\n')[0]
      if (out.includes('\n')) {
        p.kill()
        try {
          resolve(JSON.parse(line!) as { status: number; ids: string[] })
        } catch (err) {
          reject(err)
        }
      }
    })
    p.on('error', reject)
    p.on('close', () => reject(new Error(`no answer from the forked child: ${out}`)))
  })
}
