/**
 * Federation between two real `server run` processes: over an https_web endpoint (no bootstrap),
 * and a CA rotation in one domain reaching the other before the new CA signs.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { admin, eventually, startDomainServer, twoDomains } from '../helpers/federation.js'

test('https_web: a server fetches a foreign bundle from an endpoint with a web certificate, no bootstrap', async (t) => {
  const { root, one, two } = await twoDomains(t, 'fedweb')
  // A private "web" CA stands in for a public one: the fetching server trusts it the way Node
  // trusts any extra root (NODE_EXTRA_CA_CERTS), the endpoint's name is checked as usual.
  const ssl = (...a: string[]) => execFileSync('openssl', a, { cwd: root, stdio: 'pipe' })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  ssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=web CA',
  )
  ssl('req', ...ec, '-keyout', 'web.key', '-out', 'web.csr', '-subj', '/CN=localhost')
  writeFileSync(
    join(root, 'web.ext'),
    'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n',
  )
  ssl(
    'x509',
    '-req',
    '-in',
    'web.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'web.pem',
    '-days',
    '1',
    '-extfile',
    'web.ext',
  )
  await startDomainServer(
    two,
    [
      '[server.federation.bundle_endpoint]',
      'address = "127.0.0.1"',
      `port = ${two.endpointPort}`,
      'profile = "https_web"',
      `cert_file = "${join(root, 'web.pem')}"`,
      `key_file = "${join(root, 'web.key')}"`,
    ].join('\n'),
    t,
  )
  await startDomainServer(
    one,
    [
      '[server.federation.federates_with."two.test"]',
      `bundle_endpoint_url = "https://localhost:${two.endpointPort}/"`,
      'bundle_endpoint_profile = { type = "https_web" }',
    ].join('\n'),
    t,
    { NODE_EXTRA_CA_CERTS: join(root, 'ca.pem') },
  )
  const got = await eventually('one.test holds two.test bundle', async () => {
    // Pretty output with -format spiffe is the bundle document itself.
    const bundle = await admin(
      one,
      'bundle',
      'show',
      '-id',
      'spiffe://two.test',
      '--format',
      'spiffe',
    )
    return { bundle }
  })
  const theirs = await admin(two, 'bundle', 'show', '--format', 'pem')
  assert.equal(
    TrustBundle.fromSpiffeJson(TrustDomain.parse('two.test'), got.bundle).toPem(),
    theirs,
  )
})

test('a CA rotation in one domain reaches the other before the new CA signs', async (t) => {
  const { one, two } = await twoDomains(t, 'fedrot')
  // A 60 s CA: the next one is prepared (and published) at 30 s, signs from 50 s.
  await startDomainServer(
    one,
    [
      'ca_ttl = "60s"',
      'default_x509_svid_ttl = "10s"',
      'default_jwt_svid_ttl = "10s"',
      'agent_ttl = "30s"',
      '[server.federation.bundle_endpoint]',
      'address = "127.0.0.1"',
      `port = ${one.endpointPort}`,
      'refresh_hint = "1s"',
    ].join('\n'),
    t,
  )
  await startDomainServer(
    two,
    [
      '[server.federation.federates_with."one.test"]',
      `bundle_endpoint_url = "https://127.0.0.1:${one.endpointPort}/"`,
      'bundle_endpoint_profile = { type = "https_spiffe", endpoint_spiffe_id = "spiffe://one.test/spire/server" }',
    ].join('\n'),
    t,
  )
  const file = join(two.dir, 'one.json')
  writeFileSync(file, await admin(one, 'bundle', 'show', '--format', 'spiffe'))
  await admin(two, 'bundle', 'set', '-id', 'spiffe://one.test', '-path', file, '-format', 'spiffe')
  const first = new X509Certificate(
    TrustBundle.fromSpiffeJson(TrustDomain.parse('one.test'), readFileSync(file, 'utf8'))
      .x509Authorities[0]!,
  )
  const activation =
    Date.parse(first.validFrom) +
    ((Date.parse(first.validTo) - Date.parse(first.validFrom)) * 5) / 6
  const seen = await eventually(
    'two.test holds the next CA of one.test',
    async () => {
      const r = {
        bundle: await admin(
          two,
          'bundle',
          'show',
          '-id',
          'spiffe://one.test',
          '--format',
          'spiffe',
        ),
      }
      const cas = TrustBundle.fromSpiffeJson(
        TrustDomain.parse('one.test'),
        r.bundle,
      ).x509Authorities
      return cas.length >= 2 ? Date.now() : undefined
    },
    80_000,
  )
  // Certificates carry whole seconds: allow one for the rounding of validFrom.
  assert.ok(seen < activation - 1000, `next CA arrived ${seen - activation} ms after it signs`)
})
