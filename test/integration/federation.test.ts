/**
 * SPIFFE federation end to end: two trust domains on one host (two `server run`, two `agent run`),
 * federated through their bundle endpoints (https_spiffe, bootstrapped with `bundle set`). A
 * workload of each gets the other's bundle from the Workload API, the two do mTLS with Node's tls
 * checking the peer's SPIFFE ID, and a JWT-SVID of one domain validates in the other.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { type ClientX509Svid, workloadClient } from '../../src/agent/workload-api/client.js'
import { adminCall } from '../../src/server/admin-client.js'
import { certificateToPem } from '../../src/spiffe/bundle.js'
import {
  admin,
  type Domain,
  eventually,
  startDomainAgent,
  startDomainServer,
  twoDomains,
} from '../helpers/federation.js'

const pem = (ders: readonly Uint8Array[]) => ders.map(certificateToPem).join('')
const keyPem = (pkcs8: Uint8Array) =>
  `-----BEGIN PRIVATE KEY-----\n${Buffer.from(pkcs8)
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END PRIVATE KEY-----\n`

function uriSan(cert: { subjectaltname?: string } | undefined): string | undefined {
  return (cert?.subjectaltname ?? '')
    .split(', ')
    .find((s) => s.startsWith('URI:'))
    ?.slice(4)
}

function federationToml(self: Domain, peer: Domain): string {
  return [
    '[server.federation.bundle_endpoint]',
    'address = "127.0.0.1"',
    `port = ${self.endpointPort}`,
    'refresh_hint = "2s"',
    `[server.federation.federates_with."${peer.td}"]`,
    `bundle_endpoint_url = "https://127.0.0.1:${peer.endpointPort}/"`,
    `bundle_endpoint_profile = { type = "https_spiffe", endpoint_spiffe_id = "spiffe://${peer.td}/spire/server" }`,
  ].join('\n')
}

/** mTLS between the two workloads; each side accepts only the other's SPIFFE ID. */
async function mtls(
  server: ClientX509Svid,
  serverTrusts: Uint8Array[],
  client: ClientX509Svid,
  clientTrusts: Uint8Array[],
): Promise<{ serverSaw: string; clientSaw: string }> {
  let serverSaw = ''
  const srv = createServer(
    {
      cert: pem(server.chain),
      key: keyPem(server.privateKey),
      ca: pem(serverTrusts),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (s: TLSSocket) => {
      serverSaw = uriSan(s.getPeerCertificate()) ?? ''
      s.end(serverSaw === client.spiffeId ? 'ok' : 'wrong peer')
    },
  )
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
  try {
    const port = (srv.address() as { port: number }).port
    const reply = await new Promise<string>((resolve, reject) => {
      const c = connect({
        host: '127.0.0.1',
        port,
        cert: pem(client.chain),
        key: keyPem(client.privateKey),
        ca: pem(clientTrusts),
        // An X509-SVID names its workload by URI SAN, not host name: check that instead.
        checkServerIdentity: (_h, cert) =>
          uriSan(cert) === server.spiffeId
            ? undefined
            : new Error(`peer is ${uriSan(cert)}, not ${server.spiffeId}`),
      })
      let data = ''
      c.on('data', (d: Buffer) => {
        data += d.toString()
      })
      c.on('end', () => resolve(data))
      c.on('error', reject)
    })
    assert.equal(reply, 'ok')
    return { serverSaw, clientSaw: server.spiffeId }
  } finally {
    srv.close()
  }
}

/**
 * The same with OpenSSL as the connecting workload: s_client verifies the chain against its
 * federated bundle, then the peer's URI SAN is read with `openssl x509` and compared.
 */
function opensslMtls(
  dir: string,
  server: ClientX509Svid,
  serverTrusts: Uint8Array[],
  client: ClientX509Svid,
  clientTrusts: Uint8Array[],
): Promise<{ serverSaw: string; clientSaw: string }> {
  writeFileSync(join(dir, 'c.pem'), pem(client.chain))
  writeFileSync(join(dir, 'c.key'), keyPem(client.privateKey), { mode: 0o600 })
  writeFileSync(join(dir, 'ca.pem'), pem(clientTrusts))
  let serverSaw = ''
  const srv = createServer(
    {
      cert: pem(server.chain),
      key: keyPem(server.privateKey),
      ca: pem(serverTrusts),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (s: TLSSocket) => {
      serverSaw = uriSan(s.getPeerCertificate()) ?? ''
      s.end('ok\n')
    },
  )
  return new Promise((resolve, reject) => {
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port
      const child = spawn(
        'openssl',
        [
          's_client',
          '-connect',
          `127.0.0.1:${port}`,
          '-cert',
          'c.pem',
          '-key',
          'c.key',
          '-CAfile',
          'ca.pem',
          '-verify_return_error',
          '-ign_eof',
        ],
        { cwd: dir },
      )
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
      })
      child.stdin.end()
      child.on('error', reject)
      child.on('exit', () => {
        srv.close()
        if (!/Verify return code: 0 \(ok\)/.test(out)) return reject(new Error(`openssl: ${out}`))
        const leaf = out.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/)
        if (!leaf) return reject(new Error('openssl printed no certificate'))
        const san = execFileSync('openssl', ['x509', '-noout', '-ext', 'subjectAltName'], {
          input: `${leaf[0]}\n`,
        }).toString()
        resolve({ serverSaw, clientSaw: san.match(/URI:(\S+)/)?.[1] ?? '' })
      })
    })
  })
}

test('two trust domains federate over https_spiffe bundle endpoints: bundles, mTLS and JWT across', async (t) => {
  const { one, two } = await twoDomains(t, 'fed')
  await startDomainServer(one, federationToml(one, two), t)
  await startDomainServer(two, federationToml(two, one), t)
  assert.equal(one.server!.first.bundle_endpoint, `127.0.0.1:${one.endpointPort}`)

  // Before bootstrap the fetch cannot check the endpoint: it fails and says so.
  await eventually('the fetch failure is logged', async () =>
    /federated bundle fetch failed; keeping the last good bundle[^\n]*two\.test/.test(
      one.server!.stderr(),
    )
      ? true
      : undefined,
  )
  assert.equal((await admin(one, 'bundle', 'count')).trim(), '0 bundles')

  // SPIRE's bootstrap: each operator hands the other its bundle once (SPIFFE format).
  for (const [d, peer] of [
    [one, two],
    [two, one],
  ] as const) {
    const file = join(d.dir, `${peer.td}.json`)
    writeFileSync(file, await admin(peer, 'bundle', 'show', '--format', 'spiffe'))
    await admin(
      d,
      'bundle',
      'set',
      '-id',
      `spiffe://${peer.td}`,
      '-path',
      file,
      '-format',
      'spiffe',
    )
  }
  // The endpoint itself then serves: the fetcher logs an update (or finds it equal) and the
  // status records a success.
  for (const [d, peer] of [
    [one, two],
    [two, one],
  ] as const) {
    await eventually(`${d.td} fetched ${peer.td} from its endpoint`, async () => {
      // Fetch status is ours, not in SPIRE's ListFederatedBundlesResponse: the admin API has it.
      const r = (await adminCall(d.server!.adminSocket, 'GET', '/v1/federated-bundles')) as {
        bundles: { trust_domain: string }[]
        federation: { trustDomain: string; lastSuccess?: string }[]
      }
      return r.federation.find((f) => f.trustDomain === peer.td)?.lastSuccess
    })
  }
  assert.match(await admin(one, 'bundle', 'list'), /\* two\.test[\s\S]*BEGIN CERTIFICATE/)
  assert.match(await admin(one, 'federation', 'list'), /Found 1 federation relationship\n/)
  // -output json: SPIRE's types.FederationRelationship (the profile a oneof).
  const rel = JSON.parse(
    await admin(one, 'federation', 'show', '-trustDomain', 'two.test', '--json'),
  )
  assert.deepEqual(rel.https_spiffe, {
    endpoint_spiffe_id: 'spiffe://two.test/spire/server',
    bootstrap_bundle: null,
  })
  assert.equal(rel.trust_domain, 'two.test')
  const status = await adminCall(one.server!.adminSocket, 'GET', '/v1/federation/two.test')
  assert.ok(status.lastSuccess)

  // Entries in each domain federate with the other; one agent per domain.
  const uid = String(process.getuid!())
  for (const [d, peer] of [
    [one, two],
    [two, one],
  ] as const) {
    const token = JSON.parse(
      await admin(d, 'token', 'generate', '--spiffeID', `spiffe://${d.td}/host`, '--json'),
    ).value as string
    await admin(
      d,
      'entry',
      'create',
      '--parentID',
      `spiffe://${d.td}/host`,
      '--spiffeID',
      `spiffe://${d.td}/workload`,
      '--selector',
      `unix:uid:${uid}`,
      '--federatesWith',
      `spiffe://${peer.td}`,
    )
    await startDomainAgent(d, token, t)
  }

  const c1 = workloadClient(`unix://${one.agent!.socket}`, { ownConnection: true })
  const c2 = workloadClient(`unix://${two.agent!.socket}`, { ownConnection: true })
  t.after(() => {
    c1.close()
    c2.close()
  })
  const withFederated = (c: typeof c1, peer: string) =>
    eventually(`federated bundle of ${peer} reaches the workload`, async () => {
      const r = await c.fetchX509()
      return r.federatedBundles.has(`spiffe://${peer}`) && r.svids.length > 0 ? r : undefined
    })
  const x1 = await withFederated(c1, 'two.test')
  const x2 = await withFederated(c2, 'one.test')

  // What each workload got for the other domain is that domain's own CA.
  const caOf = (r: Awaited<typeof x1>) =>
    r.svids[0]!.bundle.map((d) => Buffer.from(d).toString('hex'))
  assert.deepEqual(
    x1.federatedBundles.get('spiffe://two.test')!.map((d) => Buffer.from(d).toString('hex')),
    caOf(x2),
  )
  assert.deepEqual(
    x2.federatedBundles.get('spiffe://one.test')!.map((d) => Buffer.from(d).toString('hex')),
    caOf(x1),
  )
  assert.equal(new X509Certificate(x1.federatedBundles.get('spiffe://two.test')![0]!).ca, true)

  // FetchX509Bundles / FetchJWTBundles carry both domains, each under its own key.
  const b1 = await c1.fetchX509Bundles()
  assert.deepEqual([...b1.keys()].sort(), ['spiffe://one.test', 'spiffe://two.test'])
  const j1 = await c1.fetchJwtBundles()
  assert.ok((JSON.parse(j1.get('spiffe://two.test')!) as { keys: unknown[] }).keys.length > 0)

  // mTLS: one.test's workload serves, two.test's connects; each trusts only the other's domain
  // bundle as delivered by its own agent, and checks the peer's SPIFFE ID.
  const m = await mtls(
    x1.svids[0]!,
    x1.federatedBundles.get('spiffe://two.test')!,
    x2.svids[0]!,
    x2.federatedBundles.get('spiffe://one.test')!,
  )
  assert.equal(m.serverSaw, 'spiffe://two.test/workload')
  assert.equal(m.clientSaw, 'spiffe://one.test/workload')
  const o = await opensslMtls(
    two.dir,
    x1.svids[0]!,
    x1.federatedBundles.get('spiffe://two.test')!,
    x2.svids[0]!,
    x2.federatedBundles.get('spiffe://one.test')!,
  )
  assert.deepEqual(o, {
    serverSaw: 'spiffe://two.test/workload',
    clientSaw: 'spiffe://one.test/workload',
  })
  // OpenSSL with only its own domain's CA refuses the peer.
  await assert.rejects(
    opensslMtls(
      two.dir,
      x1.svids[0]!,
      x1.federatedBundles.get('spiffe://two.test')!,
      x2.svids[0]!,
      x2.svids[0]!.bundle,
    ),
    /openssl:/,
  )
  // Without the federated bundle (own domain's CA only) the handshake fails: the trust came from
  // federation, not from something shared by accident.
  await assert.rejects(
    mtls(
      x1.svids[0]!,
      x1.svids[0]!.bundle,
      x2.svids[0]!,
      x2.federatedBundles.get('spiffe://one.test')!,
    ),
  )

  // JWT-SVID of two.test validates at one.test's agent, with foreign claims filtered.
  const [jwt] = await c2.fetchJwt(['spiffe://one.test/workload'])
  const v = await c1.validateJwt('spiffe://one.test/workload', jwt!.token)
  assert.equal(v.spiffeId, 'spiffe://two.test/workload')
  assert.deepEqual(Object.keys(v.claims).sort(), ['aud', 'exp', 'sub'])
  // …and the other way round.
  const [jwt1] = await c1.fetchJwt(['x'])
  assert.equal((await c2.validateJwt('x', jwt1!.token)).spiffeId, 'spiffe://one.test/workload')

  // An operator removes two.test's bundle at one.test and the endpoint is gone: the fetcher
  // cannot check it any more and keeps nothing (no bundle to trust is not trust).
  await admin(one, 'bundle', 'delete', '-id', 'spiffe://two.test')
  assert.equal((await admin(one, 'bundle', 'count')).trim(), '0 bundles')
})
