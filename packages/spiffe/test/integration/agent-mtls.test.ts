/**
 * The library against our real agent and server processes: two workloads with different SPIFFE
 * IDs (this process as uid 0, a child as uid 65534) talk mTLS over node:https and gRPC; the
 * server refuses a peer its authorizer does not allow; a short TTL rotates the server's
 * certificate for new connections while an open one keeps working; the agent restarting
 * mid-watch is recovered from.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { rmSync } from 'node:fs'
import * as https from 'node:https'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import * as tls from 'node:tls'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import {
  authorizeAny,
  authorizeID,
  createX509Source,
  grpcChannelCredentials,
  grpcPeerId,
  grpcServerCredentials,
  peerSpiffeId,
  tlsClientOptions,
  tlsServerOptions,
  type X509Source,
} from '../../src/index.js'
import { type Deployment, deploy, NOBODY } from '../helpers/deployment.js'
import { whoService } from '../helpers/echo-service.js'

const SERVER_ID = 'spiffe://example.org/server'
const CLIENT_ID = 'spiffe://example.org/client'
const childScript = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'helpers',
  'workload-client.js',
)

interface ChildResult {
  self?: string
  serverSeen?: string
  reply?: string
  error?: { code?: string; message?: string }
}

/** Runs the client workload as uid 65534, so the agent attests it as CLIENT_ID. */
function clientWorkload(
  d: Deployment,
  mode: 'https' | 'grpc',
  target: string,
): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [childScript, mode, d.socket, target, SERVER_ID],
      { uid: NOBODY, gid: NOBODY, timeout: 60_000 },
      (err, stdout, stderr) => {
        const line = stdout.trim().split('\n').pop() ?? ''
        try {
          resolve(JSON.parse(line) as ChildResult)
        } catch {
          reject(new Error(`client workload: ${err?.message} ${stdout} ${stderr}`))
        }
      },
    )
  })
}

function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) return resolve()
      if (Date.now() > end) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, 25)
    }
    tick()
  })
}

let d: Deployment
let source: X509Source

// Registered at the top level: a test.after() called inside test.before() would run as soon
// as that hook ends.
const cleanup: (() => Promise<void>)[] = []
test.after(async () => {
  for (const f of cleanup.reverse()) await f()
})

test.before(async () => {
  // One deployment for the file (the machine is shared): uid 0 is the server workload, with a
  // short TTL so its certificate rotates every few seconds; uid 65534 is the client workload.
  d = await deploy({ after: (f) => cleanup.push(f) }, [
    { id: SERVER_ID, uid: 0, ttl: 8 },
    { id: CLIENT_ID, uid: NOBODY },
  ])
  cleanup.push(async () => rmSync(d.dir, { recursive: true, force: true }))
  source = createX509Source({
    address: `unix://${d.socket}`,
    backoff: { initialMs: 100, maxMs: 500 },
  })
  cleanup.push(async () => source.close())
  await source.ready({ timeoutMs: 30_000 })
})

test('node:https: two workloads with different SPIFFE IDs see each other; a refused peer gets nothing', async (t) => {
  assert.equal(source.getX509Svid().id.toString(), SERVER_ID)
  const opts = tlsServerOptions(source, authorizeID(CLIENT_ID))
  let handled = 0
  const server = opts.attach(
    https.createServer(opts, (req, res) => {
      handled++
      res.end(`server saw ${peerSpiffeId(req.socket)}`)
    }),
  )
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => server.close())
  const port = (server.address() as { port: number }).port

  const r = await clientWorkload(d, 'https', `127.0.0.1:${port}`)
  assert.equal(r.error, undefined, JSON.stringify(r.error))
  assert.equal(r.self, CLIENT_ID)
  assert.equal(r.serverSeen, SERVER_ID, 'the client saw the server')
  assert.equal(r.reply, `server saw ${CLIENT_ID}`, 'the server saw the client')
  assert.equal(handled, 1)

  // This process holds SERVER_ID, which the server's authorizer does not allow as a client.
  const refused = await new Promise<string>((resolve) => {
    const req = https.get(
      `https://127.0.0.1:${port}/`,
      { ...tlsClientOptions(source, authorizeAny()), agent: false },
      (res) => resolve(`status ${res.statusCode}`),
    )
    req.on('error', (e) => resolve(`error ${(e as { code?: string }).code ?? e.message}`))
  })
  assert.match(refused, /^error (ECONNRESET|EPIPE|ERR_SSL|socket hang up)/, refused)
  assert.equal(handled, 1, 'the handler never ran for the refused peer')
})

test('gRPC: channel and server credentials from sources; the server refuses a peer it does not allow', async (t) => {
  const server = new grpc.Server()
  server.addService(whoService, {
    Who: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
      cb(null, Buffer.from(`server saw ${grpcPeerId(call)}`)),
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      '127.0.0.1:0',
      grpcServerCredentials(source, authorizeID(CLIENT_ID)),
      (e, p) => (e ? reject(e) : resolve(p)),
    ),
  )
  t.after(() => server.forceShutdown())
  const r = await clientWorkload(d, 'grpc', `127.0.0.1:${port}`)
  assert.equal(r.error, undefined, JSON.stringify(r.error))
  assert.equal(r.self, CLIENT_ID)
  assert.equal(r.reply, `server saw ${CLIENT_ID}`)

  const Client = grpc.makeGenericClientConstructor(whoService, 'Echo')
  const c = new Client(`127.0.0.1:${port}`, grpcChannelCredentials(source, authorizeID(SERVER_ID)))
  t.after(() => c.close())
  const err = await new Promise<grpc.ServiceError | null>((resolve) =>
    (c as unknown as Record<string, (...a: unknown[]) => void>).Who!(
      Buffer.alloc(0),
      { deadline: new Date(Date.now() + 15_000) },
      (e: grpc.ServiceError | null) => resolve(e),
    ),
  )
  assert.equal(err?.code, grpc.status.PERMISSION_DENIED, String(err))

  // And the client refuses a server its authorizer does not name.
  const picky = new Client(
    `127.0.0.1:${port}`,
    grpcChannelCredentials(source, authorizeID('spiffe://example.org/someone-else')),
  )
  t.after(() => picky.close())
  const err2 = await new Promise<grpc.ServiceError | null>((resolve) =>
    (picky as unknown as Record<string, (...a: unknown[]) => void>).Who!(
      Buffer.alloc(0),
      { deadline: new Date(Date.now() + 5_000) },
      (e: grpc.ServiceError | null) => resolve(e),
    ),
  )
  assert.ok(
    err2?.code === grpc.status.UNAVAILABLE || err2?.code === grpc.status.DEADLINE_EXCEEDED,
    String(err2),
  )
})

test('rotation: the short TTL changes the certificate on new connections, the open one keeps working', async (t) => {
  const opts = tlsServerOptions(source, authorizeAny())
  const server = opts.attach(
    tls.createServer(opts, (s) => {
      s.on('data', (b) => s.write(b))
      s.on('error', () => {})
    }),
  )
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => server.close())
  const port = (server.address() as { port: number }).port
  const connect = () =>
    new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect(
        { host: '127.0.0.1', port, ...tlsClientOptions(source, authorizeAny()) },
        () => resolve(s),
      )
      s.once('error', reject)
    })
  const echo = async (s: tls.TLSSocket, text: string) => {
    s.write(text)
    const [b] = (await once(s, 'data')) as [Buffer]
    return b.toString()
  }
  const first = await connect()
  t.after(() => first.destroy())
  const serial1 = first.getPeerCertificate().serialNumber
  await until(
    () => source.getX509Svid().serialNumber.toUpperCase() !== serial1.toUpperCase(),
    'the agent rotating the SVID',
  )
  const second = await connect()
  t.after(() => second.destroy())
  const serial2 = second.getPeerCertificate().serialNumber
  assert.notEqual(serial2, serial1)
  assert.equal(await echo(first, 'old connection'), 'old connection')
  assert.equal(await echo(second, 'new connection'), 'new connection')
})

test('the agent restarting mid-watch: the source keeps serving, reconnects and updates again', async () => {
  const errors: Error[] = []
  let updates = 0
  const onError = (e: Error) => errors.push(e)
  const onUpdate = () => updates++
  source.on('error', onError)
  source.on('update', onUpdate)
  try {
    await d.stopAgent()
    await until(() => errors.length > 0, 'the watch noticing the agent is gone')
    assert.equal(source.getX509Svid().id.toString(), SERVER_ID, 'the last SVID is still held')
    const before = updates
    await d.startAgent()
    await until(() => updates > before, 'an update from the restarted agent')
    assert.equal(source.getX509Svid().id.toString(), SERVER_ID)
  } finally {
    source.off('error', onError)
    source.off('update', onUpdate)
  }
})
