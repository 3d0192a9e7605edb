import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { connect } from 'node:tls'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import {
  agentArgs,
  hostTokenFor,
  processDir,
  type ServerProcess,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { run } from '../helpers/exec.js'
import { discover, httpsGet, oidcVerify } from '../helpers/oidc-client.js'

type T = { after: (fn: () => Promise<void>) => void }

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port
      s.close(() => resolve(p))
    })
  })
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A self-signed web certificate for localhost, made by OpenSSL (the provider's TLS files). */
async function webCert(dir: string): Promise<{ cert: string; key: string; pem: string }> {
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  const r = await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '1',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ])
  assert.equal(r.code, 0, r.stderr)
  return { cert, key, pem: readFileSync(cert, 'utf8') }
}

/** The SHA-256 fingerprint of the certificate a TLS server presents (not verified: compared). */
function presented(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const opts = { host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false }
    const s = connect(opts, () => {
      resolve(s.getPeerCertificate().fingerprint256)
      s.end()
    })
    s.on('error', reject)
  })
}

interface Domain {
  server: ServerProcess
  socket: string
  dir: string
}

/** A real server process (with `serverToml`) and agent process, one entry for this uid. */
async function trustDomain(t: T, serverToml: string): Promise<Domain> {
  const dir = processDir('spiffe-edge-oidc-')
  t.after(async () => rmSync(dir, { recursive: true, force: true }))
  const server = await startServerProcess(dir, t, serverToml)
  const token = await hostTokenFor(server, 'spiffe://example.org/workload')
  const config = writeAgentConfig(dir, server.address, 'sync_interval = "1s"')
  const agent = await startCli(
    [...agentArgs(config), '--join-token', token, '--insecure-bootstrap'],
    t,
  )
  return { server, socket: String(agent.first.socket_path), dir }
}

/** A JWT-SVID from the agent's Workload API, as a workload gets it (retried until the entry syncs). */
async function jwtSvid(socket: string, audience: string): Promise<string> {
  const c = workloadClient(`unix://${socket}`, { ownConnection: true })
  try {
    for (let i = 0; ; i++) {
      try {
        return (await c.fetchJwt([audience]))[0]!.token
      } catch (err) {
        if (i >= 60) throw err
        await sleep(500)
      }
    }
  } finally {
    c.close()
  }
}

function oidcConfig(
  dir: string,
  name: string,
  port: number,
  tls: { cert: string; key: string },
  body: string,
): string {
  const f = join(dir, `${name}.conf`)
  writeFileSync(
    f,
    `[oidc]\ndomains = ["localhost"]\nbind_port = ${port}\ncert_file = "${tls.cert}"\n` +
      `key_file = "${tls.key}"\npoll_interval = "1s"\ncache_max_age = "60s"\n${body}\n`,
  )
  return f
}

test('an OIDC relying party accepts our JWT-SVIDs through the discovery provider; a wrong issuer fails', async (t) => {
  const port = await freePort()
  const issuer = `https://localhost:${port}`
  const d = await trustDomain(t, `jwt_issuer = "${issuer}"`)
  const tls = await webCert(d.dir)
  const conf = oidcConfig(
    d.dir,
    'oidc',
    port,
    tls,
    `[oidc.workload_api]\nsocket_path = "${d.socket}"\ntrust_domain = "example.org"`,
  )
  const oidc = await startCli(['oidc', 'run', '--config', conf], t)
  assert.equal(oidc.first.tls, true)
  assert.equal(oidc.first.source, 'workload_api')

  const token = await jwtSvid(d.socket, 'vault')
  assert.equal(decodeJwt(token).iss, issuer, 'jwt_issuer sets iss')
  const payload = await oidcVerify(issuer, token, 'vault', tls.pem)
  assert.equal(payload.sub, 'spiffe://example.org/workload')
  assert.equal(payload.iss, issuer)
  // The same token for another audience, or an RP of another issuer, is refused.
  await assert.rejects(oidcVerify(issuer, token, 'other', tls.pem), /aud/)
  const { jwks } = await discover(issuer, tls.pem)
  const { jwtVerify, createLocalJWKSet } = await import('jose')
  await assert.rejects(
    jwtVerify(token, createLocalJWKSet(jwks), {
      issuer: 'https://oidc.other.example',
      audience: 'vault',
    }),
    /iss/,
  )
  // The JWKS holds exactly the trust domain's JWT keys, public members only, marked for signing.
  const wl = workloadClient(`unix://${d.socket}`, { ownConnection: true })
  const bundle = JSON.parse((await wl.fetchJwtBundles()).get('spiffe://example.org')!) as {
    keys: { kid: string }[]
  }
  wl.close()
  assert.deepEqual(jwks.keys.map((k) => k.kid).sort(), bundle.keys.map((k) => k.kid).sort())
  for (const k of jwks.keys) {
    assert.equal(k.use, 'sig')
    assert.equal(k.alg, 'ES256')
    assert.deepEqual(Object.keys(k).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'])
  }
  assert.ok(jwks.keys.some((k) => k.kid === decodeProtectedHeader(token).kid))

  // HTTP behaviour: cache headers and ETag revalidation, the Host allowlist, GET only, no body.
  const keysUrl = `${issuer}/keys`
  const first = await httpsGet(keysUrl, tls.pem)
  assert.equal(first.headers['cache-control'], 'public, max-age=60')
  const etag = String(first.headers.etag)
  assert.match(etag, /^"[\w-]+"$/)
  const again = await httpsGet(keysUrl, tls.pem, { headers: { 'if-none-match': etag } })
  assert.equal(again.status, 304)
  assert.equal(again.text, '')
  const evil = await httpsGet(keysUrl, tls.pem, { headers: { host: 'evil.example' } })
  assert.equal(evil.status, 400)
  assert.match(evil.text, /not allowed/)
  const post = await httpsGet(keysUrl, tls.pem, { method: 'POST', body: '{}' })
  assert.equal(post.status, 405)
  assert.equal(post.headers.allow, 'GET, HEAD')
  const withBody = await httpsGet(keysUrl, tls.pem, {
    headers: { 'content-length': '1' },
    body: 'x',
  })
  assert.equal(withBody.status, 413)
  const head = await httpsGet(`${issuer}/.well-known/openid-configuration`, tls.pem, {
    method: 'HEAD',
  })
  assert.equal(head.status, 200)
  assert.equal(head.text, '')
  const missing = await httpsGet(`${issuer}/other`, tls.pem)
  assert.equal(missing.status, 404)
  const { doc } = await discover(issuer, tls.pem)
  assert.deepEqual(doc, {
    issuer,
    jwks_uri: `${issuer}/keys`,
    authorization_endpoint: '',
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['ES256'],
  })

  // A second provider, fed from the admin socket, publishing another issuer: the same keys, but an
  // RP of that issuer refuses our token (its iss names the first).
  const port2 = await freePort()
  const issuer2 = `https://localhost:${port2}/td`
  const conf2 = oidcConfig(
    d.dir,
    'oidc2',
    port2,
    tls,
    `jwt_issuer = "${issuer2}"\n[oidc.server_api]\nadmin_socket = "${d.server.adminSocket}"`,
  )
  const oidc2 = await startCli(['oidc', 'run', '--config', conf2], t)
  assert.equal(oidc2.first.source, 'server_api')
  const second = await discover(issuer2, tls.pem)
  assert.equal(second.doc.jwks_uri, `${issuer2}/keys`)
  assert.deepEqual(second.jwks.keys.map((k) => k.kid).sort(), jwks.keys.map((k) => k.kid).sort())
  await assert.rejects(oidcVerify(issuer2, token, 'vault', tls.pem), /iss/)

  // A renewed certificate (as certbot writes it: new files renamed into place) is served within
  // a poll interval, without a restart.
  const before = await presented(port)
  assert.equal(before, new X509Certificate(tls.pem).fingerprint256)
  mkdirSync(join(d.dir, 'renewed'))
  const renewed = await webCert(join(d.dir, 'renewed'))
  renameSync(renewed.key, tls.key)
  renameSync(renewed.cert, tls.cert)
  let after = before
  for (let i = 0; i < 40 && after === before; i++) {
    await sleep(250)
    after = await presented(port)
  }
  assert.equal(after, new X509Certificate(renewed.pem).fingerprint256, 'the renewed one is served')
  assert.equal((await discover(issuer, renewed.pem)).doc.issuer, issuer)
})

test('after a JWT key rotation the new key is in the JWKS before any token it signed', async (t) => {
  const port = await freePort()
  const issuer = `https://localhost:${port}`
  // A 45 s CA life: the next JWT key is published at 1/2 and signs from 5/6 (ca.ts).
  const d = await trustDomain(
    t,
    `jwt_issuer = "${issuer}"\nca_ttl = "45s"\ndefault_x509_svid_ttl = "15s"\ndefault_jwt_svid_ttl = "5s"`,
  )
  const tls = await webCert(d.dir)
  const conf = oidcConfig(
    d.dir,
    'oidc',
    port,
    tls,
    `[oidc.workload_api]\nsocket_path = "${d.socket}"\ntrust_domain = "example.org"`,
  )
  await startCli(['oidc', 'run', '--config', conf], t)
  const firstToken = await jwtSvid(d.socket, 'rot-0')
  const firstKid = decodeProtectedHeader(firstToken).kid!
  const seenInJwks = new Map<string, number>()
  const wl = workloadClient(`unix://${d.socket}`, { ownConnection: true })
  t.after(async () => wl.close())
  const deadline = Date.now() + 120_000
  let i = 0
  let rotated: { kid: string; at: number; token: string } | undefined
  while (!rotated) {
    assert.ok(Date.now() < deadline, 'no token signed by a new JWT key within 120 s')
    const { jwks } = await discover(issuer, tls.pem)
    const now = Date.now()
    for (const k of jwks.keys) if (k.kid && !seenInJwks.has(k.kid)) seenInJwks.set(k.kid, now)
    // A new audience each time: the agent's JWT cache would otherwise hand back an older token.
    const token = (await wl.fetchJwt([`rot-${++i}`]))[0]!.token
    const kid = decodeProtectedHeader(token).kid!
    if (kid !== firstKid) rotated = { kid, at: Date.now(), token }
    else await sleep(250)
  }
  const published = seenInJwks.get(rotated.kid)
  assert.ok(published !== undefined, 'the new key was never in the JWKS before it signed')
  // ca.ts leaves ~1/3 of ca_ttl (15 s here, less a 5 s tick) between the two; the agent's sync
  // and the provider's poll take ~2 s of it. 3 s of margin proves the order, not a race won.
  assert.ok(
    rotated.at - published >= 3000,
    `the new key reached the JWKS ${rotated.at - published} ms before its first token`,
  )
  // And the relying party, fetching afresh, accepts the token the new key signed.
  const payload = await oidcVerify(issuer, rotated.token, `rot-${i}`, tls.pem)
  assert.equal(payload.sub, 'spiffe://example.org/workload')
})
