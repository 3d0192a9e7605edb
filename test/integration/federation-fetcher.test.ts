/**
 * The federation fetcher against a real HTTPS bundle endpoint whose answers the test controls
 * (certificates made with OpenSSL, bundles in a real SQLite datastore), and our own bundle
 * endpoint's HTTP behaviour. What must be refused is refused, and the last good bundle stays.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, request } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { openSqliteDatastore } from '../../src/server/datastore/sqlite.js'
import type { FederationRelationship } from '../../src/server/federation/config.js'
import { FederationFetcher } from '../../src/server/federation/fetcher.js'
import { parsePemCertificates, TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { startTestServer } from '../helpers/server.js'

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
}

/** A CA and a leaf for `san` (URI:… or DNS:…), as PEM files in `dir`. */
function makeCerts(dir: string, name: string, san: string) {
  openssl(
    dir,
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    `${name}-ca.key`,
    '-out',
    `${name}-ca.pem`,
    '-days',
    '2',
    '-subj',
    `/CN=${name} CA`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign',
  )
  openssl(
    dir,
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${name}`,
  )
  writeFileSync(
    join(dir, `${name}.ext`),
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`,
  )
  openssl(
    dir,
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${name}-ca.pem`,
    '-CAkey',
    `${name}-ca.key`,
    '-CAcreateserial',
    '-out',
    `${name}.pem`,
    '-days',
    '1',
    '-extfile',
    `${name}.ext`,
  )
  const ca = readFileSync(join(dir, `${name}-ca.pem`), 'utf8')
  return {
    ca,
    caDer: parsePemCertificates(ca)[0]!,
    cert: readFileSync(join(dir, `${name}.pem`), 'utf8'),
    key: readFileSync(join(dir, `${name}.key`), 'utf8'),
  }
}

test('fetcher: takes a newer bundle, refuses a rolled-back, re-keyed-in-place, oversized or wrongly-identified one, keeping the last good', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-fedfetch-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const td = TrustDomain.parse('two.test')
  const ep = makeCerts(dir, 'ep', 'URI:spiffe://two.test/spire/server')
  const other = makeCerts(dir, 'other', 'URI:spiffe://two.test/other')
  let body = ''
  const server = createServer({ cert: ep.cert, key: ep.key }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(body)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  t.after(() => server.close())
  const url = `https://127.0.0.1:${(server.address() as { port: number }).port}/`
  const ds = await openSqliteDatastore(join(dir, 'ds.sqlite3'))
  t.after(() => ds.close())
  const own = new TrustBundle({
    trustDomain: TrustDomain.parse('one.test'),
    x509Authorities: [other.caDer],
  })
  const logs: string[] = []
  const fetcher = new FederationFetcher({
    relationships: [],
    datastore: ds,
    ownBundle: () => own,
    log: (_l, msg) => logs.push(msg),
  })
  const rel: FederationRelationship = {
    trustDomain: 'two.test',
    bundleEndpointUrl: url,
    profile: { type: 'https_spiffe', endpointSpiffeId: 'spiffe://two.test/spire/server' },
  }
  const serve = (seq: number, cas: Uint8Array[]) => {
    body = new TrustBundle({
      trustDomain: td,
      x509Authorities: cas,
      sequence: seq,
      refreshHintSeconds: 60,
    }).toSpiffeJson()
  }
  const code = async (p: Promise<unknown>) => {
    try {
      await p
      return 'ok'
    } catch (err) {
      return (err as { code?: string }).code
    }
  }

  // No bootstrap bundle: nothing to check the endpoint with.
  serve(5, [ep.caDer])
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  // Bootstrap with a bundle that does not hold the endpoint's CA: TLS refuses the endpoint.
  await ds.setFederatedBundle(
    'two.test',
    new TrustBundle({ trustDomain: td, x509Authorities: [other.caDer] }).toSpiffeJson(),
    0,
  )
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  assert.equal((await ds.getFederatedBundle('two.test'))!.sequence, 0)
  // The right bootstrap bundle: sequence 5 is taken, with its refresh hint.
  await ds.setFederatedBundle(
    'two.test',
    new TrustBundle({ trustDomain: td, x509Authorities: [ep.caDer] }).toSpiffeJson(),
    0,
  )
  const got = await fetcher.fetchOnce(rel)
  assert.equal(got.sequence, 5)
  assert.equal(got.refreshHintSeconds, 60)
  assert.equal((await ds.getFederatedBundle('two.test'))!.sequence, 5)

  // Rolled back: refused, 5 kept.
  serve(4, [ep.caDer])
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  // Keys changed without a new sequence: refused.
  serve(5, [ep.caDer, other.caDer])
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  // Over the size cap: refused unread.
  body = `{"keys":[],"pad":"${'x'.repeat(300 * 1024)}"}`
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  // Not a bundle / a bundle without X.509 authority: refused.
  body = '{"keys":[]}'
  assert.equal(await code(fetcher.fetchOnce(rel)), 'ERR_FEDERATION_FETCH')
  const kept = await ds.getFederatedBundle('two.test')
  assert.equal(kept!.sequence, 5)
  assert.deepEqual(
    TrustBundle.fromSpiffeJson(td, kept!.json).x509Authorities.map(
      (d) => new X509Certificate(d).subject,
    ),
    ['CN=ep CA'],
  )

  // The endpoint presents a valid certificate of the domain but for another SPIFFE ID: refused.
  serve(6, [ep.caDer])
  const wrongId: FederationRelationship = {
    ...rel,
    profile: { type: 'https_spiffe', endpointSpiffeId: 'spiffe://two.test/not-the-server' },
  }
  assert.equal(await code(fetcher.fetchOnce(wrongId)), 'ERR_FEDERATION_FETCH')
  // https_web against a certificate from no public CA: refused (web PKI trust only).
  assert.equal(
    await code(fetcher.fetchOnce({ ...rel, profile: { type: 'https_web' } })),
    'ERR_FEDERATION_FETCH',
  )
  // A newer bundle with a key rotation: taken.
  serve(6, [ep.caDer, other.caDer])
  assert.equal((await fetcher.fetchOnce(rel)).sequence, 6)
  assert.ok(logs.includes('federated bundle updated'))
})

function get(
  url: string,
  method = 'GET',
  ca?: string,
): Promise<{ status: number; body: string; san: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method,
        agent: false,
        rejectUnauthorized: ca !== undefined,
        ...(ca ? { ca, checkServerIdentity: () => undefined } : {}),
      },
      (res) => {
        let body = ''
        const cert = (
          res.socket as unknown as { getPeerCertificate(): { subjectaltname?: string } }
        ).getPeerCertificate()
        res.on('data', (d: Buffer) => {
          body += d.toString()
        })
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body, san: cert?.subjectaltname ?? '' })
        })
      },
    )
    req.on('error', reject)
    req.end()
  })
}

test('bundle endpoint (https_spiffe): GET serves our bundle with sequence and refresh hint under the server SVID; other methods 405', async (t) => {
  await using s = await startTestServer({
    extraToml:
      'attest_rate_per_second = 1000\n[server.federation.bundle_endpoint]\naddress = "127.0.0.1"\nport = 0\nrefresh_hint = "42s"',
  })
  void t
  const port = s.server.bundleEndpointPort!
  const ca = s.server.ca.bundle().toPem()
  const r = await get(`https://127.0.0.1:${port}/`, 'GET', ca)
  assert.equal(r.status, 200)
  assert.equal(r.san, 'URI:spiffe://example.org/spire/server, DNS:localhost')
  const doc = JSON.parse(r.body) as { spiffe_sequence: number; spiffe_refresh_hint: number }
  assert.equal(doc.spiffe_refresh_hint, 42)
  assert.equal(doc.spiffe_sequence, s.server.ca.bundle().sequence)
  const b = TrustBundle.fromSpiffeJson(TrustDomain.parse('example.org'), r.body)
  assert.ok(
    b.equals(
      new TrustBundle({
        ...s.server.ca.bundle(),
        trustDomain: b.trustDomain,
        refreshHintSeconds: 42,
      }),
    ),
  )
  assert.equal((await get(`https://127.0.0.1:${port}/`, 'POST', ca)).status, 405)
  // No client certificate needed, and our own bundle cannot be replaced through `bundle set`.
  await assert.rejects(
    s.admin('PUT', '/v1/federated-bundles/spiffe%3A%2F%2Fexample.org', {
      bundle: ca,
      format: 'pem',
    }),
    /our own trust domain/,
  )
})

test('bundle endpoint (https_web): serves the configured certificate', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-fedweb-'))
  try {
    const web = makeCerts(dir, 'web', 'DNS:localhost,IP:127.0.0.1')
    await using s = await startTestServer({
      extraToml: `attest_rate_per_second = 1000\n[server.federation.bundle_endpoint]\naddress = "127.0.0.1"\nport = 0\nprofile = "https_web"\ncert_file = "${join(dir, 'web.pem')}"\nkey_file = "${join(dir, 'web.key')}"`,
    })
    const r = await get(`https://127.0.0.1:${s.server.bundleEndpointPort}/`, 'GET', web.ca)
    assert.equal(r.status, 200)
    assert.equal(r.san, 'DNS:localhost, IP Address:127.0.0.1')
    assert.ok(
      TrustBundle.fromSpiffeJson(TrustDomain.parse('example.org'), r.body).x509Authorities.length >
        0,
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
