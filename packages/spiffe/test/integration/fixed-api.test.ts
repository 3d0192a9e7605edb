/**
 * The library against a second Workload API implementation built in the test from the spec's
 * proto (test/helpers/fixed-workload-api.ts), so nothing here leans on our agent's quirks.
 */
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import * as http2 from 'node:http2'
import * as https from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import * as tls from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import {
  authorizeAny,
  authorizeID,
  authorizeMemberOf,
  createBundleSource,
  createJWTSource,
  createX509Source,
  httpsAgent,
  peerSpiffeId,
  tlsClientOptions,
  tlsServerOptions as tlsServerOptionsFor,
  validateJwtSvid,
  type X509Source,
} from '../../src/index.js'
import { type FixedState, startFixedWorkloadApi } from '../helpers/fixed-workload-api.js'
import { issue, jwtFor, type TestCa, testCa } from '../helpers/pki.js'

const dir = mkdtempSync(join(tmpdir(), 'spiffe-lib-fixed-'))
test.after(() => rmSync(dir, { recursive: true, force: true }))
let n = 0
const sock = () => join(dir, `api-${n++}.sock`)

async function state(ca: TestCa, ...paths: string[]): Promise<FixedState> {
  return {
    svids: await Promise.all(
      paths.map(async (p) => ({ svid: await issue(ca, p), ca, hint: p.slice(1) })),
    ),
    federated: [],
  }
}

function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) return resolve()
      if (Date.now() > end) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, 20)
    }
    tick()
  })
}

/** A node:tls echo server with the library's options; resolves to its port. */
async function echoServer(source: X509Source, authorize: ReturnType<typeof authorizeAny>) {
  const opts = tlsServerOptionsFor(source, authorize)
  const seen: string[] = []
  const server = opts.attach(
    tls.createServer(opts, (s) => {
      seen.push(String(peerSpiffeId(s)))
      s.on('data', (d) => s.write(d))
      s.on('error', () => {})
    }),
  )
  server.on('tlsClientError', () => {})
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { server, seen, port: (server.address() as { port: number }).port }
}

function connect(port: number, source: X509Source, authorize: ReturnType<typeof authorizeAny>) {
  return new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ...tlsClientOptions(source, authorize) }, () =>
      resolve(s),
    )
    s.once('error', reject)
  })
}

async function echo(s: tls.TLSSocket, text: string): Promise<string> {
  s.write(text)
  const [d] = (await once(s, 'data')) as [Buffer]
  return d.toString()
}

/** The client sees a refusal either as a handshake error or as the server closing at once. */
async function refused(p: Promise<tls.TLSSocket>): Promise<string> {
  try {
    const s = await p
    s.write('x')
    const r = await Promise.race([
      once(s, 'data').then(() => 'data'),
      once(s, 'close').then(() => 'closed'),
      once(s, 'error').then(([e]) => String((e as Error).message)),
    ])
    s.destroy()
    return r
  } catch (err) {
    return `error: ${(err as { code?: string }).code ?? (err as Error).message}`
  }
}

test('X509Source: SVIDs, hint and picker, federated bundles, the security header on every call', async (t) => {
  const a = await testCa('a.test')
  const b = await testCa('b.test')
  const st = await state(a, '/one', '/two')
  st.federated.push(b)
  const api = await startFixedWorkloadApi(sock(), st)
  t.after(() => api.close())
  const byDefault = createX509Source({ address: api.address })
  const byHint = createX509Source({ address: api.address, hint: 'two' })
  const byPicker = createX509Source({
    address: api.address,
    picker: (s) => s.find((x) => x.id.path === '/one'),
  })
  t.after(() => {
    for (const s of [byDefault, byHint, byPicker]) s.close()
  })
  await Promise.all([byDefault.ready(), byHint.ready(), byPicker.ready()])
  assert.equal(byDefault.getX509Svid().id.toString(), 'spiffe://a.test/one')
  assert.equal(byHint.getX509Svid().id.toString(), 'spiffe://a.test/two')
  assert.equal(byPicker.getX509Svid().id.toString(), 'spiffe://a.test/one')
  assert.deepEqual([...byDefault.x509Bundles().keys()].sort(), ['a.test', 'b.test'])
  assert.equal(byDefault.getX509BundleForTrustDomain(b.td)?.authorities.length, 1)
  const none = createX509Source({ address: api.address, hint: 'nope' })
  t.after(() => none.close())
  await none.ready()
  assert.throws(() => none.getX509Svid(), { code: 'ERR_SOURCE_NO_SVID' })
  assert.ok(api.headers.length >= 4 && api.headers.every((h) => h === 'true'), api.headers.join())
})

test('mTLS over node:tls: both sides see each other, the authorizer and the trust domain decide', async (t) => {
  const a = await testCa('a.test')
  const other = await testCa('other.test')
  const apiServer = await startFixedWorkloadApi(sock(), await state(a, '/server'))
  const apiClient = await startFixedWorkloadApi(sock(), await state(a, '/client'))
  // The stranger trusts a.test (federated), so only the server's own check can refuse it.
  const strangerState = await state(other, '/client')
  strangerState.federated.push(a)
  const apiStranger = await startFixedWorkloadApi(sock(), strangerState)
  t.after(() => Promise.all([apiServer.close(), apiClient.close(), apiStranger.close()]))
  const server = createX509Source({ address: apiServer.address })
  const client = createX509Source({ address: apiClient.address })
  const stranger = createX509Source({ address: apiStranger.address })
  t.after(() => {
    for (const s of [server, client, stranger]) s.close()
  })
  await Promise.all([server.ready(), client.ready(), stranger.ready()])

  const srv = await echoServer(server, authorizeID('spiffe://a.test/client'))
  t.after(() => srv.server.close())
  const s = await connect(srv.port, client, authorizeID('spiffe://a.test/server'))
  assert.equal(await echo(s, 'hello'), 'hello')
  assert.equal(String(peerSpiffeId(s)), 'spiffe://a.test/server')
  assert.deepEqual(srv.seen, ['spiffe://a.test/client'])
  s.destroy()

  // The client refuses a server its authorizer does not accept: the handshake fails.
  assert.match(
    await refused(connect(srv.port, client, authorizeID('spiffe://a.test/someone-else'))),
    /ERR_PEER_UNAUTHORIZED|not authorized/,
  )
  // The server refuses a client of its trust domain its authorizer does not accept: the server
  // workload connecting as a client is destroyed before the listener sees it.
  assert.equal(await refused(connect(srv.port, server, authorizeAny())), 'closed')
  // A client of a trust domain the server does not trust fails the server's chain check.
  assert.match(
    await refused(connect(srv.port, stranger, authorizeAny())),
    /closed|ECONNRESET|alert|unknown ca/i,
  )
  assert.deepEqual(srv.seen, ['spiffe://a.test/client'], 'no refused peer reached the listener')

  const open = await echoServer(server, authorizeMemberOf('a.test'))
  t.after(() => open.server.close())
  const s2 = await connect(open.port, client, authorizeAny())
  assert.equal(await echo(s2, 'member'), 'member')
  s2.destroy()
})

test('rotation: a pushed SVID is used for new connections, the open one keeps working', async (t) => {
  const a = await testCa('a.test')
  const apiServer = await startFixedWorkloadApi(sock(), await state(a, '/server'))
  const apiClient = await startFixedWorkloadApi(sock(), await state(a, '/client'))
  t.after(() => Promise.all([apiServer.close(), apiClient.close()]))
  const server = createX509Source({ address: apiServer.address })
  const client = createX509Source({ address: apiClient.address })
  t.after(() => {
    for (const s of [server, client]) s.close()
  })
  await Promise.all([server.ready(), client.ready()])
  const srv = await echoServer(server, authorizeAny())
  t.after(() => srv.server.close())
  const first = await connect(srv.port, client, authorizeAny())
  const serial1 = first.getPeerCertificate().serialNumber
  const updated = once(server, 'update')
  apiServer.set(await state(a, '/server'))
  await updated
  const second = await connect(srv.port, client, authorizeAny())
  const serial2 = second.getPeerCertificate().serialNumber
  assert.notEqual(serial2, serial1, 'new connection, new certificate')
  assert.equal(serial2.toLowerCase(), server.getX509Svid().serialNumber.toLowerCase())
  assert.equal(await echo(first, 'still'), 'still', 'the old connection still works')
  first.destroy()
  second.destroy()
})

test('the Workload API going away mid-watch: the source keeps its SVID, reconnects, updates', async (t) => {
  const a = await testCa('a.test')
  const path = sock()
  let api = await startFixedWorkloadApi(path, await state(a, '/w'))
  t.after(() => api.close())
  const source = createX509Source({ address: api.address, backoff: { initialMs: 50, maxMs: 200 } })
  t.after(() => source.close())
  await source.ready()
  const before = source.getX509Svid().serialNumber
  const errors: Error[] = []
  source.on('error', (e) => errors.push(e))
  await api.close()
  await until(() => errors.length > 0, 'the watch noticing')
  assert.equal(source.getX509Svid().serialNumber, before, 'the last SVID is still served')
  api = await startFixedWorkloadApi(path, await state(a, '/w'))
  await until(() => source.getX509Svid().serialNumber !== before, 'the new SVID after reconnect')
})

test('JWTSource: fetch for an audience, validate locally and through the Workload API', async (t) => {
  const a = await testCa('a.test')
  const api = await startFixedWorkloadApi(sock(), await state(a, '/jwt'))
  t.after(() => api.close())
  const source = createJWTSource({ address: api.address })
  t.after(() => source.close())
  await source.ready()
  const svid = await source.fetchJwtSvid({ audience: 'db' })
  assert.equal(svid.id.toString(), 'spiffe://a.test/jwt')
  assert.deepEqual(svid.claims.aud, ['db'])
  assert.ok(svid.expiresAt.getTime() > Date.now())
  const local = await source.validateJwtSvid(svid.token, 'db')
  assert.equal(local.id.toString(), 'spiffe://a.test/jwt')
  assert.equal(local.claims.sub, 'spiffe://a.test/jwt')
  const remote = await source.validateWithWorkloadApi(svid.token, 'db')
  assert.equal(remote.id.toString(), 'spiffe://a.test/jwt')
  assert.deepEqual(remote.claims.aud, ['db'])
  await assert.rejects(source.validateJwtSvid(svid.token, 'other'), { code: 'ERR_SVID_INVALID' })
  await assert.rejects(source.validateWithWorkloadApi(svid.token, 'other'), {
    code: 'ERR_WORKLOAD_API',
  })
  const tampered = `${svid.token.slice(0, -4)}AAAA`
  await assert.rejects(source.validateJwtSvid(tampered, 'db'), { code: 'ERR_SVID_INVALID' })
})

test('ready() times out with a code when nothing answers; a closed source says so', async () => {
  const source = createX509Source({ address: `unix://${join(dir, 'nobody-here.sock')}` })
  await assert.rejects(source.ready({ timeoutMs: 300 }), { code: 'ERR_SOURCE_TIMEOUT' })
  source.close()
  await assert.rejects(source.ready(), { code: 'ERR_SOURCE_CLOSED' })
  assert.throws(() => source.getX509Svid(), { code: 'ERR_SOURCE_CLOSED' })
  const saved = process.env.SPIFFE_ENDPOINT_SOCKET
  delete process.env.SPIFFE_ENDPOINT_SOCKET
  try {
    assert.throws(() => createX509Source(), { code: 'ERR_WORKLOAD_ENDPOINT' })
  } finally {
    if (saved !== undefined) process.env.SPIFFE_ENDPOINT_SOCKET = saved
  }
})

test('node:http2: the same options serve and call over HTTP/2; the peer ID reaches the handler', async (t) => {
  const a = await testCa('a.test')
  const apiServer = await startFixedWorkloadApi(sock(), await state(a, '/h2server'))
  const apiClient = await startFixedWorkloadApi(sock(), await state(a, '/h2client'))
  t.after(() => Promise.all([apiServer.close(), apiClient.close()]))
  const server = createX509Source({ address: apiServer.address })
  const client = createX509Source({ address: apiClient.address })
  t.after(() => {
    for (const s of [server, client]) s.close()
  })
  await Promise.all([server.ready(), client.ready()])
  const opts = tlsServerOptionsFor(server, authorizeID('spiffe://a.test/h2client'))
  const h2 = opts.attach(
    http2.createSecureServer(opts, (req, res) => {
      res.end(`h2 peer ${peerSpiffeId(req.socket)}`)
    }),
  )
  h2.listen(0, '127.0.0.1')
  await once(h2, 'listening')
  t.after(() => h2.close())
  const port = (h2.address() as { port: number }).port
  const session = http2.connect(
    `https://127.0.0.1:${port}`,
    tlsClientOptions(client, authorizeID('spiffe://a.test/h2server')),
  )
  t.after(() => session.close())
  const req = session.request({ ':path': '/' })
  let body = ''
  req.on('data', (d: Buffer) => {
    body += d.toString()
  })
  await once(req, 'end')
  assert.equal(body, 'h2 peer spiffe://a.test/h2client')
  assert.equal(String(peerSpiffeId(session.socket)), 'spiffe://a.test/h2server')
  // The server workload calling itself is refused before any stream is served.
  const self = http2.connect(`https://127.0.0.1:${port}`, tlsClientOptions(server, authorizeAny()))
  self.on('error', () => {})
  const [why] = await Promise.race([
    once(self, 'close').then(() => ['closed']),
    once(self.request({ ':path': '/' }), 'response').then(() => ['served']),
  ]).catch((e: Error) => [e.message])
  assert.notEqual(why, 'served')
  self.destroy()
})

test('BundleSource: X.509 and JWT bundles of every trust domain; local JWT validation with it', async (t) => {
  const a = await testCa('a.test')
  const b = await testCa('b.test')
  const st = await state(a, '/bundles')
  st.federated.push(b)
  const api = await startFixedWorkloadApi(sock(), st)
  t.after(() => api.close())
  const bundles = createBundleSource({ address: api.address })
  t.after(() => bundles.close())
  await bundles.ready()
  assert.equal(bundles.getX509BundleForTrustDomain(b.td)?.authorities.length, 1)
  assert.deepEqual(
    [...(bundles.getJwtBundleForTrustDomain(a.td)?.authorities.keys() ?? [])],
    [a.jwtKid],
  )
  const token = await jwtFor(b, '/federated-caller', ['api'])
  const v = await validateJwtSvid(token, 'api', bundles)
  assert.equal(v.id.toString(), 'spiffe://b.test/federated-caller')
  const unknown = await testCa('c.test')
  await assert.rejects(validateJwtSvid(await jwtFor(unknown, '/x', ['api']), 'api', bundles), {
    code: 'ERR_SVID_INVALID',
  })
})

test('PermissionDenied is retried until an entry appears; InvalidArgument closes the source', async (t) => {
  const a = await testCa('a.test')
  const st = await state(a, '/late')
  const api = await startFixedWorkloadApi(sock(), { ...st, refuse: grpc.status.PERMISSION_DENIED })
  t.after(() => api.close())
  const source = createX509Source({ address: api.address, backoff: { initialMs: 20, maxMs: 100 } })
  t.after(() => source.close())
  const errors: Error[] = []
  source.on('error', (e) => errors.push(e))
  await until(() => errors.length >= 2, 'two refused attempts')
  assert.equal(source.closed, false)
  api.set(st) // the entry "appears": the next attempt is served
  await source.ready({ timeoutMs: 10_000 })
  assert.equal(source.getX509Svid().id.toString(), 'spiffe://a.test/late')

  const bad = await startFixedWorkloadApi(sock(), { ...st, refuse: grpc.status.INVALID_ARGUMENT })
  t.after(() => bad.close())
  const doomed = createX509Source({ address: bad.address })
  await assert.rejects(doomed.ready(), {
    code: 'ERR_WORKLOAD_API',
    status: grpc.status.INVALID_ARGUMENT,
  })
  assert.equal(doomed.closed, true)
})

test('httpsAgent: new requests present the client SVID current at connect time', async (t) => {
  const a = await testCa('a.test')
  const apiServer = await startFixedWorkloadApi(sock(), await state(a, '/web'))
  const apiClient = await startFixedWorkloadApi(sock(), await state(a, '/caller'))
  t.after(() => Promise.all([apiServer.close(), apiClient.close()]))
  const server = createX509Source({ address: apiServer.address })
  const client = createX509Source({ address: apiClient.address })
  t.after(() => {
    for (const s of [server, client]) s.close()
  })
  await Promise.all([server.ready(), client.ready()])
  const opts = tlsServerOptionsFor(server, authorizeID('spiffe://a.test/caller'))
  const web = opts.attach(
    https.createServer(opts, (req, res) => {
      res.end((req.socket as tls.TLSSocket).getPeerCertificate().serialNumber)
    }),
  )
  web.listen(0, '127.0.0.1')
  await once(web, 'listening')
  t.after(() => web.close())
  const url = `https://127.0.0.1:${(web.address() as { port: number }).port}/`
  const agent = httpsAgent(client, authorizeID('spiffe://a.test/web'))
  t.after(() => agent.destroy())
  const get = () =>
    new Promise<string>((resolve, reject) => {
      https
        .get(url, { agent }, (res) => {
          let b = ''
          res.on('data', (d: Buffer) => {
            b += d.toString()
          })
          res.on('end', () => resolve(b))
        })
        .on('error', reject)
    })
  const first = await get()
  assert.equal(first.toLowerCase(), client.getX509Svid().serialNumber.toLowerCase())
  const updated = once(client, 'update')
  apiClient.set(await state(a, '/caller'))
  await updated
  const second = await get()
  assert.notEqual(second, first)
  assert.equal(second.toLowerCase(), client.getX509Svid().serialNumber.toLowerCase())
})

test('a shared keep-alive agent never lets one authorizer reuse a socket or session another verified', async (t) => {
  const a = await testCa('a.test')
  const apiServer = await startFixedWorkloadApi(sock(), await state(a, '/shared'))
  const apiClient = await startFixedWorkloadApi(sock(), await state(a, '/caller'))
  t.after(() => Promise.all([apiServer.close(), apiClient.close()]))
  const server = createX509Source({ address: apiServer.address })
  const client = createX509Source({ address: apiClient.address })
  t.after(() => {
    for (const s of [server, client]) s.close()
  })
  await Promise.all([server.ready(), client.ready()])
  const opts = tlsServerOptionsFor(server, authorizeAny())
  const web = opts.attach(https.createServer(opts, (_req, res) => res.end('ok')))
  web.listen(0, '127.0.0.1')
  await once(web, 'listening')
  t.after(() => web.close())
  const url = `https://127.0.0.1:${(web.address() as { port: number }).port}/`
  const shared = new https.Agent({ keepAlive: true })
  t.after(() => shared.destroy())
  const get = (authorize: ReturnType<typeof authorizeAny>) =>
    new Promise<string>((resolve) => {
      https
        .get(url, { ...tlsClientOptions(client, authorize), agent: shared }, (res) => {
          res.resume()
          res.on('end', () => resolve(`status ${res.statusCode}`))
        })
        .on('error', (e) => resolve(`error ${(e as { code?: string }).code ?? e.message}`))
    })
  assert.equal(await get(authorizeID('spiffe://a.test/shared')), 'status 200')
  assert.equal(await get(authorizeID('spiffe://a.test/shared')), 'status 200')
  assert.match(
    await get(authorizeID('spiffe://a.test/someone-else')),
    /^error ERR_PEER_UNAUTHORIZED/,
  )
})
