/**
 * The server side of bench/workload-latency.ts, one process each (forked with an IPC channel):
 *
 *   wl-server.js server <dir>  a real server (join token, SQLite, disk keys); answers
 *                              {ready: address, admin: admin socket}
 *   wl-server.js agent <dir> <address> <admin socket>
 *                              a real agent (join token, SQLite, disk keys) against that server and
 *                              the real Workload API endpoint with the unix attestor on
 *                              <dir>/agent.sock; nothing else in its process, so its CPU time and
 *                              RSS are the agent's alone
 *   wl-server.js bare <dir>    a bare grpc-js server on <dir>/bare.sock answering with the bytes
 *                              the parent sends (the agent's own), nothing else
 *
 * Messages from the parent: {op:'bytes', x509, jwt} (bare), {op:'rotate'}, {op:'rss'}, {op:'cpu'},
 * {op:'gc'} (full collections, when run with --expose-gc, before the parent reads VmRSS),
 * {op:'entries', n} (agent: n more entries of other workloads, synced, so the agent caches n more
 * SVIDs; answers the cache's {entries, bytes}), {op:'quit'}.
 * 'rotate' answers {t0}: process.hrtime (CLOCK_MONOTONIC, the same clock in every process) when
 * the fan-out began: the bare server's first write, or the agent's first subscriber callback
 * after a re-issued SVID reached its cache.
 * BENCH_SMAPS=<dir>: each 'gc' also writes <dir>/<role>-<n>.txt, the process's resident memory by
 * mapping (/proc/self/smaps) and V8's heap spaces, to compare the agent's with the bare server's.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { getHeapSpaceStatistics } from 'node:v8'
import * as grpc from '@grpc/grpc-js'
// Only what the bare server needs is imported statically: the agent's and the server's modules
// load in their own roles (below), so the bare process holds grpc-js and the service definition
// alone and its RSS is a bare grpc-js server's, not one that also loaded the agent's code.
import { workloadServiceDefinition } from '../src/agent/workload-api/service.js'

let smapsNo = 0
/** With BENCH_SMAPS set, where this process's RSS is (see the header). */
function dumpSmaps(): void {
  const rss = process.memoryUsage().rss
  const dir = process.env.BENCH_SMAPS
  if (dir) {
    const byName = new Map<string, number>()
    let name = '[anon]'
    for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
      if (head) name = head[1] || '[anon]'
      else if (line.startsWith('Rss:')) {
        byName.set(name, (byName.get(name) ?? 0) + Number(line.split(/\s+/)[1]))
      }
    }
    const rows = [...byName].sort((a, b) => b[1] - a[1]).map(([n, kb]) => `${kb} KiB ${n}`)
    const v8 = getHeapSpaceStatistics().map(
      (x) =>
        `${x.space_name} used ${(x.space_used_size / 1024).toFixed(0)} KiB, committed ${(x.physical_space_size / 1024).toFixed(0)} KiB`,
    )
    writeFileSync(
      join(dir, `${process.argv[2]}-${smapsNo++}.txt`),
      [`VmRSS ${(rss / 1024).toFixed(0)} KiB`, ...rows, ...v8, ''].join('\n'),
    )
  }
}

import type { WorkloadSource } from '../src/agent/workload-api/types.js'

type Msg =
  | { op: 'bytes'; x509: string; x509b: string; jwt: string }
  | { op: 'entries'; n: number }
  | { op: 'rotate' | 'rss' | 'cpu' | 'gc' | 'quit' }

/** Full collections before RSS is read, so both processes report live memory, not garbage. */
const gc = async () => {
  const settle = Number(process.env.BENCH_SETTLE_MS ?? 0)
  if (settle > 0) await new Promise((r) => setTimeout(r, settle))
  const g = (globalThis as { gc?: () => void }).gc
  for (let i = 0; i < 3; i++) g?.()
  // Time for what the process does after a full collection (the agent's malloc_trim,
  // src/agent/heap-trim.ts), as after V8's own; node hands GC entries to observers when the loop
  // next wakes, hence two timers. The same wait for both processes.
  for (let i = 0; i < 2; i++) await new Promise((r) => setTimeout(r, 30))
  dumpSmaps()
  send({ ok: true, mem: process.memoryUsage(), newSpace: newSpaceMiB() })
}
const newSpaceMiB = () =>
  (getHeapSpaceStatistics().find((x) => x.space_name === 'new_space')?.space_size ?? 0) / 2 ** 20

const send = (m: unknown) => process.send!(m)
const now = () => Number(process.hrtime.bigint()) / 1e6
/** This process's CPU time (user + system), µs: what a call costs the server, whatever the load. */
const cpuUs = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

async function bare(dir: string): Promise<void> {
  const socket = join(dir, 'bare.sock')
  let x509 = Buffer.alloc(0)
  let x509b = Buffer.alloc(0)
  let jwt = Buffer.alloc(0)
  const open = new Set<grpc.ServerWritableStream<Buffer, Buffer>>()
  const server = new grpc.Server({ 'grpc.max_concurrent_streams': 1000 })
  const unimplemented = (_c: unknown, cb?: grpc.sendUnaryData<Buffer>) =>
    cb?.({ code: grpc.status.UNIMPLEMENTED })
  server.addService(workloadServiceDefinition, {
    FetchX509SVID(call: grpc.ServerWritableStream<Buffer, Buffer>) {
      open.add(call)
      call.on('cancelled', () => open.delete(call))
      call.write(x509)
    },
    FetchJWTSVID(_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      cb(null, jwt)
    },
    FetchX509Bundles: unimplemented,
    FetchJWTBundles: unimplemented,
    ValidateJWTSVID: unimplemented,
    FetchWITSVID: unimplemented,
    FetchWITBundles: unimplemented,
  })
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (e) =>
      e ? reject(e) : resolve(),
    ),
  )
  process.on('message', async (m: Msg) => {
    if (m.op === 'bytes') {
      x509 = Buffer.from(m.x509, 'base64')
      x509b = Buffer.from(m.x509b, 'base64')
      jwt = Buffer.from(m.jwt, 'base64')
      send({ ok: true })
    } else if (m.op === 'rotate') {
      const t0 = now()
      for (const c of open) c.write(x509b)
      send({ t0 })
    } else if (m.op === 'rss') send({ rss: process.memoryUsage().rss })
    else if (m.op === 'cpu') send({ us: cpuUs() })
    else if (m.op === 'gc') await gc()
    else if (m.op === 'quit') {
      server.forceShutdown()
      process.exit(0)
    }
  })
  send({ ready: socket })
}

async function server(): Promise<void> {
  const { startTestServer } = await import('../test/helpers/server.js')
  const s = await startTestServer()
  process.on('message', async (m: Msg) => {
    if (m.op === 'quit') {
      await s[Symbol.asyncDispose]()
      process.exit(0)
    }
  })
  send({ ready: s.address, admin: s.server.adminSocket })
}

async function agent(dir: string, address: string, adminSocket: string): Promise<void> {
  const [{ unixAttestor }, { startWorkloadApi }, { silentLog }, { adminCall }, { TrustDomain }] =
    await Promise.all([
      import('../src/agent/workload-api/attestors/unix.js'),
      import('../src/agent/workload-api/server.js'),
      import('../src/common/log.js'),
      import('../src/server/admin-client.js'),
      import('../src/spiffe/id.js'),
    ])
  const { startTestAgent } = await import('../test/helpers/agent.js')
  const admin = (method: 'POST' | 'PUT', path: string, body: unknown) =>
    adminCall(adminSocket, method, path, body)
  const token = String(
    (await admin('POST', '/v1/tokens', { spiffe_id: 'spiffe://example.org/host' })).token,
  )
  const entry = {
    spiffe_id: 'spiffe://example.org/bench',
    parent_id: 'spiffe://example.org/host',
    selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }],
  }
  const created = await admin('POST', '/v1/entries', entry)
  // Syncs only when asked (the rotation below), so periodic syncs do not land inside a round.
  // Room for the 'entries' op's 1,000 SVIDs besides the bench's own.
  const a = await startTestAgent(address, dir, token, {
    syncIntervalMs: 3_600_000,
    cacheMaxSize: 4096,
  })
  const manager = a.manager
  // Records when the fan-out of a rotation starts: the first subscriber callback after 'rotate'.
  let rotating = false
  let t0 = 0
  const source: WorkloadSource = {
    subscribeX509: (selectors, onUpdate) =>
      manager.subscribeX509(selectors, (u) => {
        if (rotating && t0 === 0) t0 = now()
        onUpdate(u)
      }),
    subscribeBundles: (cb) => manager.subscribeBundles(cb),
    fetchJwtSvids: (sel, aud, id) => manager.fetchJwtSvids(sel, aud, id),
    jwtBundle: (td) => manager.jwtBundle(td),
  }
  const socket = join(dir, 'agent.sock')
  const api = await startWorkloadApi({
    socketPath: socket,
    source,
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
    log: silentLog,
  })
  let rev = 0
  let nextCached = 0
  process.on('message', async (m: Msg) => {
    if (m.op === 'rotate') {
      rotating = true
      t0 = 0
      // A new entry revision makes the agent re-issue the SVID on its next sync.
      await admin('PUT', `/v1/entries/${String(created.id)}`, { ...entry, hint: `r${++rev}` })
      await manager.syncNow()
      rotating = false
      send({ t0 })
    } else if (m.op === 'entries') {
      // Entries of other workloads (uids nobody here runs as): cached ahead of time, served to no one.
      const todo = Array.from({ length: m.n }, (_, i) => ({
        spiffe_id: `spiffe://example.org/cached/${nextCached + i}`,
        parent_id: 'spiffe://example.org/host',
        selectors: [{ type: 'unix', value: `uid:${2_000_000 + nextCached + i}` }],
      }))
      nextCached += m.n
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          for (let e = todo.pop(); e; e = todo.pop()) await admin('POST', '/v1/entries', e)
        }),
      )
      await manager.syncNow()
      send(manager.x509CacheStats())
    } else if (m.op === 'rss') send({ rss: process.memoryUsage().rss })
    else if (m.op === 'cpu') send({ us: cpuUs() })
    else if (m.op === 'gc') await gc()
    else if (m.op === 'quit') {
      await api.close()
      await a[Symbol.asyncDispose]()
      process.exit(0)
    }
  })
  send({ ready: socket })
}

const [role, dir, address, adminSocket] = process.argv.slice(2)
if (role === 'bare') await bare(dir!)
else if (role === 'server') await server()
else if (role === 'agent') await agent(dir!, address!, adminSocket!)
else throw new Error(`usage: wl-server.js server|bare <dir> | agent <dir> <address> <admin socket>`)
