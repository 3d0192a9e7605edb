import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { type WorkloadClient, workloadClient } from '../../src/agent/workload-api/client.js'
import { GrpcStatus, WorkloadApiError } from '../../src/agent/workload-api/errors.js'
import { workloadCodec } from '../../src/agent/workload-api/proto.js'
import {
  RESET_BUDGET,
  startWorkloadApi,
  type WorkloadApiServer,
  type WorkloadApiServerOptions,
} from '../../src/agent/workload-api/server.js'
import type { WorkloadAttestor } from '../../src/agent/workload-api/types.js'
import { X509Bundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { validateJwtSvid } from '../../src/spiffe/jwt-svid.js'
import { validateX509Svid } from '../../src/spiffe/x509-svid.js'
import { repoRoot } from '../helpers/exec.js'
import { reflect } from '../helpers/reflection.js'
import { MemoryWorkloadSource, sel } from '../helpers/workload-source.js'

const UID = process.getuid!()
const root = mkdtempSync(join(tmpdir(), 'wl-api-'))
chmodSync(root, 0o755) // the uid-65534 child must reach the socket
after(() => rmSync(root, { recursive: true, force: true }))
let n = 0

interface Fixture extends AsyncDisposable {
  source: MemoryWorkloadSource
  server: WorkloadApiServer
  client: WorkloadClient
  socket: string
}

async function fixture(over: Partial<WorkloadApiServerOptions> = {}): Promise<Fixture> {
  const source = await MemoryWorkloadSource.create()
  const socket = join(root, `s${++n}`, 'api.sock')
  const server = await startWorkloadApi({
    socketPath: socket,
    source,
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
    ...over,
  })
  const client = workloadClient(`unix://${socket}`)
  return {
    source,
    server,
    client,
    socket,
    async [Symbol.asyncDispose]() {
      client.close()
      await server.close()
    },
  }
}

/** The entry most tests need: spiffe://example.org/web for this process's uid. */
async function addWeb(f: Fixture): Promise<void> {
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/web',
    selectors: [sel(`unix:uid:${UID}`)],
  })
}

async function rejectsStatus(p: Promise<unknown>, status: number): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof WorkloadApiError, String(err))
    assert.equal(err.code, 'ERR_WORKLOAD_API')
    assert.equal(err.status, status, err.message)
    return true
  })
}

/** A raw stream call (optionally without the security header); resolves with its status. */
function rawStream(
  socket: string,
  path: string,
  metadata: grpc.Metadata,
  onData?: (b: Buffer) => void,
): Promise<grpc.StatusObject> {
  const c = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure())
  return new Promise((resolve) => {
    const call = c.makeServerStreamRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      metadata,
    )
    call.on('data', (b: Buffer) => onData?.(b))
    call.on('error', () => undefined)
    call.on('status', (s) => {
      c.close()
      resolve(s)
    })
  })
}

const header = () => {
  const m = new grpc.Metadata()
  m.set('workload.spiffe.io', 'true')
  return m
}

describe('Workload API server', () => {
  test('a call without the security header is InvalidArgument', async () => {
    await using f = await fixture()
    const s = await rawStream(f.socket, '/SpiffeWorkloadAPI/FetchX509SVID', new grpc.Metadata())
    assert.equal(s.code, GrpcStatus.INVALID_ARGUMENT)
    assert.match(s.details, /security header missing/)
    const wrong = new grpc.Metadata()
    wrong.set('workload.spiffe.io', 'TRUE')
    const s2 = await rawStream(f.socket, '/SpiffeWorkloadAPI/FetchX509SVID', wrong)
    assert.equal(s2.code, GrpcStatus.INVALID_ARGUMENT)
    const twice = header()
    twice.add('workload.spiffe.io', 'true')
    const s3 = await rawStream(f.socket, '/SpiffeWorkloadAPI/FetchJWTBundles', twice)
    assert.equal(s3.code, GrpcStatus.INVALID_ARGUMENT)
  })

  test('a caller with no identity gets PermissionDenied on every fetch', async () => {
    await using f = await fixture()
    await f.source.addEntry({
      id: 'e1',
      spiffeId: 'spiffe://example.org/other',
      selectors: [sel('unix:uid:4242')],
    })
    await rejectsStatus(f.client.fetchX509(), GrpcStatus.PERMISSION_DENIED)
    await rejectsStatus(f.client.fetchJwt(['a']), GrpcStatus.PERMISSION_DENIED)
    await rejectsStatus(f.client.fetchX509Bundles(), GrpcStatus.PERMISSION_DENIED)
    await rejectsStatus(f.client.fetchJwtBundles(), GrpcStatus.PERMISSION_DENIED)
    // Every subscription made for those calls is gone again.
    await new Promise((r) => setTimeout(r, 50))
    assert.equal(f.source.subscribers, 0)
  })

  test('the first X509 message carries the full state at once', async () => {
    await using f = await fixture()
    await f.source.addEntry({
      id: 'e1',
      spiffeId: 'spiffe://example.org/web',
      selectors: [sel(`unix:uid:${UID}`)],
      federatesWith: ['federated.test'],
      hint: 'internal',
    })
    await f.source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/db',
      selectors: [sel(`unix:uid:${UID}`), sel(`unix:gid:${process.getgid!()}`)],
    })
    const t0 = performance.now()
    const r = await f.client.fetchX509()
    assert.ok(performance.now() - t0 < 1000)
    assert.deepEqual(
      r.svids.map((s) => s.spiffeId),
      ['spiffe://example.org/web', 'spiffe://example.org/db'],
    )
    const s = r.svids[0]!
    assert.equal(s.hint, 'internal')
    // Leaf first, and the PKCS#8 key is the leaf's.
    const leaf = new X509Certificate(s.chain[0]!)
    assert.equal(leaf.ca, false)
    assert.match(leaf.subjectAltName ?? '', /URI:spiffe:\/\/example.org\/web/)
    const key = createPrivateKey({ key: Buffer.from(s.privateKey), format: 'der', type: 'pkcs8' })
    assert.ok(
      createPublicKey(key)
        .export({ type: 'spki', format: 'der' })
        .equals(leaf.publicKey.export({ type: 'spki', format: 'der' })),
    )
    // The own bundle is the DER of the trust domain's CA, and the chain verifies against it.
    assert.equal(s.bundle.length, 1)
    assert.deepEqual(Buffer.from(s.bundle[0]!), Buffer.from(f.source.caOf('example.org')))
    const td = TrustDomain.parse('example.org')
    validateX509Svid(s.chain, () => new X509Bundle(td, s.bundle), new Date())
    // Federated bundles are keyed by the trust domain's SPIFFE ID; our own is not among them.
    assert.deepEqual([...r.federatedBundles.keys()], ['spiffe://federated.test'])
    assert.deepEqual(
      Buffer.from(r.federatedBundles.get('spiffe://federated.test')![0]!),
      Buffer.from(f.source.caOf('federated.test')),
    )
  })

  test('updates are pushed to an open stream; removing the last identity ends it', async () => {
    await using f = await fixture()
    await f.source.addEntry({
      id: 'e1',
      spiffeId: 'spiffe://example.org/one',
      selectors: [sel(`unix:uid:${UID}`)],
    })
    const updates: string[][] = []
    let gotFirst!: () => void
    const first = new Promise<void>((r) => {
      gotFirst = r
    })
    let gotSecond!: () => void
    const second = new Promise<void>((r) => {
      gotSecond = r
    })
    const status = rawStream(f.socket, '/SpiffeWorkloadAPI/FetchX509SVID', header(), (b) => {
      const m = workloadCodec.x509SvidResponse.decode(b)
      updates.push(m.svids.map((s) => s.spiffeId))
      if (updates.length === 1) gotFirst()
      if (updates.length === 2) gotSecond()
    })
    await first
    await f.source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/two',
      selectors: [sel(`unix:uid:${UID}`)],
    })
    await second
    assert.deepEqual(updates, [
      ['spiffe://example.org/one'],
      ['spiffe://example.org/one', 'spiffe://example.org/two'],
    ])
    f.source.removeEntry('e1')
    f.source.removeEntry('e2')
    const s = await status
    assert.equal(s.code, GrpcStatus.PERMISSION_DENIED)
    assert.equal(updates.length, 3) // full state after the first removal, then the end
    assert.equal(f.source.subscribers, 0)
  })

  test('SVIDs with a duplicate hint after the first are dropped', async () => {
    await using f = await fixture()
    for (const [id, path] of [
      ['e3', 'c'],
      ['e1', 'a'],
      ['e2', 'b'],
    ] as const) {
      await f.source.addEntry({
        id,
        spiffeId: `spiffe://example.org/${path}`,
        selectors: [sel(`unix:uid:${UID}`)],
        hint: path === 'c' ? 'other' : 'db',
      })
    }
    const r = await f.client.fetchX509()
    assert.deepEqual(
      r.svids.map((s) => [s.spiffeId, s.hint]),
      [
        ['spiffe://example.org/a', 'db'],
        ['spiffe://example.org/c', 'other'],
      ],
    )
  })

  test('FetchJWTSVID: audience required, tokens validate, unknown spiffe_id denied', async () => {
    await using f = await fixture()
    await addWeb(f)
    await f.source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/api',
      selectors: [sel(`unix:uid:${UID}`)],
    })
    await rejectsStatus(f.client.fetchJwt([]), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(f.client.fetchJwt(['a'], 'not-an-id'), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(
      f.client.fetchJwt(['a'], 'spiffe://example.org/nope'),
      GrpcStatus.PERMISSION_DENIED,
    )
    const all = await f.client.fetchJwt(['aud-1', 'aud-2'])
    assert.deepEqual(
      all.map((s) => s.spiffeId),
      ['spiffe://example.org/web', 'spiffe://example.org/api'],
    )
    const one = await f.client.fetchJwt(['aud-1'], 'spiffe://example.org/api')
    assert.equal(one.length, 1)
    const v = await validateJwtSvid(one[0]!.token, {
      audience: 'aud-1',
      bundles: (td) => f.source.jwtBundle(td),
      now: new Date(),
    })
    assert.equal(v.spiffeId.toString(), 'spiffe://example.org/api')
  })

  test('ValidateJWTSVID: valid token → SPIFFE ID and claims; bad input → InvalidArgument', async () => {
    await using f = await fixture()
    const token = await f.source.mint('spiffe://example.org/caller', ['me'])
    const r = await f.client.validateJwt('me', token)
    assert.equal(r.spiffeId, 'spiffe://example.org/caller')
    assert.equal(r.claims.sub, 'spiffe://example.org/caller')
    assert.deepEqual(r.claims.aud, ['me'])
    assert.equal(r.claims.iss, 'test')
    assert.equal(typeof r.claims.exp, 'number')
    // Foreign trust domain: only sub, aud, exp come back.
    const foreign = await f.source.mint('spiffe://federated.test/x', ['me'])
    const rf = await f.client.validateJwt('me', foreign)
    assert.deepEqual(Object.keys(rf.claims).sort(), ['aud', 'exp', 'sub'])
    await rejectsStatus(f.client.validateJwt('me', 'not.a.jwt'), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(f.client.validateJwt('me', 'garbage'), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(f.client.validateJwt('other', token), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(f.client.validateJwt('', token), GrpcStatus.INVALID_ARGUMENT)
    await rejectsStatus(f.client.validateJwt('me', ''), GrpcStatus.INVALID_ARGUMENT)
  })

  test('bundle streams key every trust domain by its SPIFFE ID', async () => {
    await using f = await fixture()
    await addWeb(f)
    // Federated bundles only of the domains the caller's entries federate with (SPIRE).
    assert.deepEqual([...(await f.client.fetchX509Bundles()).keys()], ['spiffe://example.org'])
    assert.deepEqual([...(await f.client.fetchJwtBundles()).keys()], ['spiffe://example.org'])
    await f.source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/web2',
      selectors: [sel(`unix:uid:${UID}`)],
      federatesWith: ['federated.test'],
    })
    const x = await f.client.fetchX509Bundles()
    assert.deepEqual([...x.keys()].sort(), ['spiffe://example.org', 'spiffe://federated.test'])
    assert.deepEqual(
      Buffer.from(x.get('spiffe://example.org')![0]!),
      Buffer.from(f.source.caOf('example.org')),
    )
    const j = await f.client.fetchJwtBundles()
    const jwks = JSON.parse(j.get('spiffe://example.org')!) as { keys: Record<string, unknown>[] }
    assert.equal(jwks.keys.length, 1)
    assert.equal(jwks.keys[0]!.kid, 'kid-example.org')
    assert.equal(jwks.keys[0]!.use, undefined)
  })

  test('health is SERVING (no header needed); WIT RPCs are Unimplemented', async () => {
    await using f = await fixture()
    assert.equal(await f.client.health(), 'SERVING')
    const s = await rawStream(f.socket, '/SpiffeWorkloadAPI/FetchWITSVID', header())
    assert.equal(s.code, GrpcStatus.UNIMPLEMENTED)
    const s2 = await rawStream(f.socket, '/SpiffeWorkloadAPI/FetchWITBundles', header())
    assert.equal(s2.code, GrpcStatus.UNIMPLEMENTED)
  })

  test('reflection lists the services and serves the workload.proto descriptor', async () => {
    await using f = await fixture()
    const c = new grpc.Client(`unix://${f.socket}`, grpc.credentials.createInsecure())
    // ServerReflectionRequest{list_services=7:"*"}, then {file_containing_symbol=4:"SpiffeWorkloadAPI"}
    const got = await reflect(c, [
      [0x3a, '*'],
      [0x22, 'SpiffeWorkloadAPI'],
    ])
    c.close()
    assert.equal(got.length, 2)
    const text = Buffer.concat(got).toString('latin1')
    assert.match(text, /grpc\.health\.v1\.Health/)
    assert.match(text, /grpc\.reflection\.v1alpha\.ServerReflection/)
    assert.match(text, /workload\.proto/)
    assert.match(text, /google\/protobuf\/struct\.proto/)
    assert.match(text, /FetchX509SVID/)
  })

  test('unix attestor selectors for this process', async () => {
    const s = await unixAttestor().attest({ pid: process.pid, uid: UID, gid: process.getgid!() })
    const values = s.map((x) => `${x.type}:${x.value}`)
    assert.ok(values.includes(`unix:uid:${UID}`))
    assert.ok(values.includes(`unix:gid:${process.getgid!()}`))
    if (UID === 0) assert.ok(values.includes('unix:user:root'))
  })

  test('a caller running as another uid gets only its own identity', {
    skip: UID !== 0 ? 'needs root to run a child as uid 65534' : false,
  }, async () => {
    await using f = await fixture()
    await f.source.addEntry({
      id: 'e1',
      spiffeId: 'spiffe://example.org/root-only',
      selectors: [sel('unix:uid:0')],
    })
    await f.source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/nobody',
      selectors: [sel('unix:uid:65534')],
    })
    const child = join(repoRoot, 'dist', 'test', 'helpers', 'workload-child.js')
    const runAs = (what: string) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const p = spawn(process.execPath, [child, f.socket, what], {
          uid: 65534,
          gid: 65534,
          stdio: ['ignore', 'pipe', 'inherit'],
        })
        let out = ''
        p.stdout.on('data', (d: Buffer) => {
          out += d.toString()
        })
        p.on('error', reject)
        p.on('close', () => resolve(JSON.parse(out) as Record<string, unknown>))
      })
    assert.deepEqual(await runAs('x509'), { ids: ['spiffe://example.org/nobody'], uid: 65534 })
    assert.deepEqual(await runAs('jwt'), { ids: ['spiffe://example.org/nobody'], uid: 65534 })
    // And root still gets only root's.
    assert.deepEqual(
      (await f.client.fetchX509()).svids.map((s) => s.spiffeId),
      ['spiffe://example.org/root-only'],
    )
  })

  test('a caller that leaves during attestation does not hurt the server', async () => {
    let started = 0
    const slow: WorkloadAttestor = {
      kind: 'WorkloadAttestor',
      name: 'slow',
      async attest() {
        started++
        await new Promise((r) => setTimeout(r, 300))
        return [{ type: 'slow', value: 'x' }]
      },
    }
    await using f = await fixture({ attestors: [unixAttestor(), slow] })
    await addWeb(f)
    const leaving = workloadClient(`unix://${f.socket}`)
    const p = leaving.fetchX509().catch((e: unknown) => e)
    while (started === 0) await new Promise((r) => setTimeout(r, 5))
    leaving.close()
    await p
    await new Promise((r) => setTimeout(r, 400))
    assert.equal(f.source.subscribers, 0)
    assert.equal((await f.client.fetchX509()).svids.length, 1)
  })

  test('a pid reused during attestation is Unauthenticated', async () => {
    // A fake /proc for the server's race check: the caller's start time changes mid-attestation.
    const proc = join(root, `proc${++n}`)
    const dir = join(proc, String(process.pid))
    mkdirSync(dir, { recursive: true })
    const stat = (start: number) =>
      `${process.pid} (node (x) y) S 1 ${'0 '.repeat(17)}${start} 0 0\n`
    writeFileSync(join(dir, 'stat'), stat(1000))
    // The stamp's ids come from status (the caller's effective ids).
    writeFileSync(join(dir, 'status'), readFileSync('/proc/self/status'))
    const swap: WorkloadAttestor = {
      kind: 'WorkloadAttestor',
      name: 'swap',
      async attest() {
        writeFileSync(join(dir, 'stat'), stat(2000))
        return []
      },
    }
    await using f = await fixture({ attestors: [unixAttestor(), swap], procRoot: proc })
    await addWeb(f)
    await rejectsStatus(f.client.fetchX509(), GrpcStatus.UNAUTHENTICATED)
  })

  test('all attestors failing is Unavailable', async () => {
    const broken: WorkloadAttestor = {
      kind: 'WorkloadAttestor',
      name: 'broken',
      attest: () => Promise.reject(new Error('boom')),
    }
    await using f = await fixture({ attestors: [broken] })
    await rejectsStatus(f.client.fetchX509(), GrpcStatus.UNAVAILABLE)
  })

  test('socket: missing directory created, stale socket replaced, live one refused', async () => {
    const dir = join(root, `deep${++n}`, 'a', 'b')
    const socket = join(dir, 'api.sock')
    const source = await MemoryWorkloadSource.create()
    const opts = {
      socketPath: socket,
      source,
      attestors: [unixAttestor()],
      trustDomain: TrustDomain.parse('example.org'),
    }
    const s1 = await startWorkloadApi(opts)
    assert.equal(statSync(dir).mode & 0o777, 0o755)
    assert.equal(statSync(socket).mode & 0o777, 0o777)
    // A second agent on the same path is refused while the first listens.
    await assert.rejects(startWorkloadApi(opts), { code: 'ERR_WORKLOAD_ENDPOINT' })
    await s1.close()
    assert.equal(existsSync(socket), false)
    // A stale socket file (its process was killed) is replaced.
    await new Promise<void>((resolve, reject) => {
      const p = spawn(process.execPath, [
        '-e',
        `require('net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`,
      ])
      p.on('error', reject)
      p.on('close', () => resolve())
    })
    assert.ok(statSync(socket).isSocket())
    await using s2 = await startWorkloadApi(opts)
    const c = workloadClient(socket)
    assert.equal(await c.health(), 'SERVING')
    c.close()
    void s2
    // A regular file in the way is not deleted.
    const file = join(dir, 'not-a-socket')
    writeFileSync(file, 'x')
    await assert.rejects(startWorkloadApi({ ...opts, socketPath: file }), {
      code: 'ERR_WORKLOAD_ENDPOINT',
    })
    // Nor is something else's listener.
    const other = join(dir, 'other.sock')
    const l = createServer().listen(other)
    await new Promise((r) => l.once('listening', r))
    await assert.rejects(startWorkloadApi({ ...opts, socketPath: other }), {
      code: 'ERR_WORKLOAD_ENDPOINT',
    })
    l.close()
  })

  test('3000 fetch-and-cancel cycles on one client do not stall (connection recycled)', async () => {
    const logs: string[] = []
    await using f = await fixture({ log: (_level, msg) => logs.push(msg) })
    await addWeb(f)
    const t0 = performance.now()
    for (let i = 0; i < 3000; i++) {
      const r = await f.client.fetchX509()
      assert.equal(r.svids.length, 1)
    }
    const ms = performance.now() - t0
    // A stall would hang; on a loaded 2-core machine 3000 cycles take up to ~70 s, idle ~10 s.
    assert.ok(ms < 150_000, `took ${ms} ms`)
    // Past ~800 resets the server moves the client to a fresh connection, gracefully: without
    // that, nghttp2's rapid-reset guard kills the connection at ~1000-1200 cycles. The budget
    // refills over time, so on a loaded machine (slow cycles) fewer recycles are needed.
    const drained = 3000 - RESET_BUDGET.perSecond * (ms / 1000)
    const expected = Math.floor(drained / (RESET_BUDGET.burst - RESET_BUDGET.recycleBelow))
    const recycled = logs.filter((m) => m.startsWith('recycling')).length
    assert.ok(recycled >= Math.min(2, expected), `${recycled} recycles in ${ms} ms`)
  })

  test('answered unary calls are not stream resets: 1,500 FetchJWTSVID on one client, no recycling', async () => {
    const logs: string[] = []
    await using f = await fixture({ log: (_level, msg) => logs.push(msg) })
    await addWeb(f)
    const t0 = performance.now()
    for (let i = 0; i < 1500; i++) {
      const r = await f.client.fetchJwt(['aud'])
      assert.equal(r.length, 1)
    }
    const ms = performance.now() - t0
    // grpc-js reports 'cancelled' after every unary call it answered; counted as resets, 1,500
    // calls within ~20 s drained the mirrored budget and recycled the connection (~800 calls).
    const recycled = logs.filter((m) => m.startsWith('recycling')).length
    assert.equal(recycled, 0, `${recycled} recycles in ${ms.toFixed(0)} ms`)
  })

  test('close ends open streams and drops their subscriptions', async () => {
    const f = await fixture()
    await addWeb(f)
    let got!: () => void
    const first = new Promise<void>((r) => {
      got = r
    })
    const status = rawStream(f.socket, '/SpiffeWorkloadAPI/FetchX509SVID', header(), () => got())
    await first
    assert.equal(f.source.subscribers, 1)
    await f.server.close()
    const s = await status
    assert.notEqual(s.code, GrpcStatus.OK)
    assert.equal(f.source.subscribers, 0)
    assert.equal(existsSync(f.socket), false)
    f.client.close()
  })
})
