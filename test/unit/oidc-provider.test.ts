import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { parseOidcConfig } from '../../src/cli/oidc/config.js'
import { hostName } from '../../src/cli/oidc/provider.js'
import { signingKeys } from '../../src/cli/oidc/source.js'

const tls = 'cert_file = "/etc/oidc/tls.crt"\nkey_file = "/etc/oidc/tls.key"\n'
const wl = '[oidc.workload_api]\nsocket_path = "/run/agent.sock"\ntrust_domain = "example.org"\n'

test('oidc config: SPIRE-like defaults, HTTPS by default, one source', () => {
  const c = parseOidcConfig(
    `[oidc]\ndomains = ["OIDC.example.org"]\n${tls}${wl}`,
    '/etc/oidc/o.conf',
  )
  assert.deepEqual(c.domains, ['oidc.example.org'])
  assert.equal(c.bindPort, 8443)
  assert.equal(c.cacheMaxAgeSeconds, 300)
  assert.equal(c.pollIntervalSeconds, 10)
  assert.deepEqual(c.tls, { certFile: '/etc/oidc/tls.crt', keyFile: '/etc/oidc/tls.key' })
  assert.deepEqual(c.source, {
    kind: 'workload_api',
    socketPath: '/run/agent.sock',
    trustDomain: 'example.org',
  })
})

test('oidc config: plain HTTP only on loopback, domains required, exactly one source', () => {
  const ok = parseOidcConfig(
    `[oidc]\ndomains = ["localhost"]\ninsecure_http = true\n${wl}`,
    'o.conf',
  )
  assert.equal(ok.tls, undefined)
  assert.equal(ok.insecureHttp, true)
  const bad = (text: string, re: RegExp) =>
    assert.throws(
      () => parseOidcConfig(text, 'o.conf'),
      (e: Error & { code?: string }) => e.code === 'ERR_CONFIG' && re.test(e.message),
      text,
    )
  bad(
    `[oidc]\ndomains = ["x.org"]\ninsecure_http = true\nbind_address = "0.0.0.0"\n${wl}`,
    /loopback/,
  )
  bad(`[oidc]\ndomains = ["x.org"]\n${wl}`, /cert_file and key_file/)
  bad(`[oidc]\n${tls}${wl}`, /oidc\.domains: required/)
  bad(`[oidc]\ndomains = ["https://x.org:443"]\n${tls}${wl}`, /not a host name/)
  bad(`[oidc]\ndomains = ["x.org"]\n${tls}`, /exactly one/)
  bad(
    `[oidc]\ndomains = ["x.org"]\n${tls}${wl}[oidc.server_api]\nadmin_socket = "/a.sock"\n`,
    /exactly one/,
  )
  bad(`[oidc]\ndomains = ["x.org"]\njwt_issuer = "http://x.org"\n${tls}${wl}`, /https/)
  bad(`[oidc]\ndomains = ["x.org"]\nport = 1\n${tls}${wl}`, /oidc\.port: unknown key/)
})

test('signingKeys serves public JWT keys only: X.509 authorities, private members and unusable keys are dropped', () => {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' })
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
    format: 'jwk',
  })
  const doc = JSON.stringify({
    keys: [
      { ...ec, kid: 'a', use: 'jwt-svid' }, // private `d` included: must not be served
      { ...rsa, kid: 'b' }, // the Workload API's JWKS has no use
      { ...ec, kid: 'c', use: 'x509-svid', x5c: ['AAAA'] },
      { kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'd' },
      { ...ec, kid: 'a' }, // duplicate kid: the first wins
      { kty: 'EC', crv: 'P-256', x: 'bad', y: 'bad', kid: 'e' },
      { ...ec }, // no kid
    ],
  })
  const keys = signingKeys(doc)
  assert.deepEqual(
    keys.map((k) => [k.kid, k.alg]),
    [
      ['a', 'ES256'],
      ['b', 'RS256'],
    ],
  )
  assert.deepEqual(Object.keys(keys[0]!.jwk).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'])
  assert.deepEqual(Object.keys(keys[1]!.jwk).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'])
  assert.equal(keys[0]!.jwk.x, ec.x)
  assert.throws(() => signingKeys('{'), { code: 'ERR_OIDC_SOURCE' })
  assert.throws(() => signingKeys('{"keys":{}}'), { code: 'ERR_OIDC_SOURCE' })
  assert.throws(() => signingKeys(' '.repeat((1 << 20) + 1)), { code: 'ERR_OIDC_SOURCE' })
})

test('hostName: the Host header without port, lower case; IPv6 literals unbracketed', () => {
  assert.equal(hostName('OIDC.Example.org:8443'), 'oidc.example.org')
  assert.equal(hostName('localhost'), 'localhost')
  assert.equal(hostName('[::1]:8443'), '::1')
  assert.equal(hostName(undefined), undefined)
  assert.equal(hostName('[::1'), undefined)
  // The Host is echoed into the discovery issuer: anything but name[:port] is refused.
  assert.equal(hostName('localhost:x/evil'), undefined)
  assert.equal(hostName('localhost/evil'), undefined)
  assert.equal(hostName('localhost:8443 '), undefined)
})
