import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseServerConfig } from '../../src/server/config.js'

const base = '[server]\ntrust_domain = "one.test"\n'
const problems = (toml: string): string => {
  try {
    parseServerConfig(base + toml, '/etc/x/server.conf')
    return ''
  } catch (err) {
    return (err as Error).message + JSON.stringify((err as { details?: unknown }).details ?? '')
  }
}

test('[server.federation]: bundle endpoint and relationships as SPIRE has them', () => {
  const c = parseServerConfig(
    `${base}[server.federation.bundle_endpoint]
address = "127.0.0.1"
port = 8443
refresh_hint = "1m"
[server.federation.federates_with."two.test"]
bundle_endpoint_url = "https://two.example:8443"
bundle_endpoint_profile = { type = "https_spiffe", endpoint_spiffe_id = "spiffe://two.test/spire/server" }
[server.federation.federates_with."web.test"]
bundle_endpoint_url = "https://web.example/bundle"
bundle_endpoint_profile = { type = "https_web" }
`,
    '/etc/x/server.conf',
  )
  assert.deepEqual(c.federation?.bundleEndpoint, {
    address: '127.0.0.1',
    port: 8443,
    refreshHintSeconds: 60,
    profile: { type: 'https_spiffe' },
  })
  assert.deepEqual(c.federation?.federatesWith, [
    {
      trustDomain: 'two.test',
      bundleEndpointUrl: 'https://two.example:8443',
      profile: { type: 'https_spiffe', endpointSpiffeId: 'spiffe://two.test/spire/server' },
    },
    {
      trustDomain: 'web.test',
      bundleEndpointUrl: 'https://web.example/bundle',
      profile: { type: 'https_web' },
    },
  ])
  const web = parseServerConfig(
    `${base}[server.federation.bundle_endpoint]\nprofile = "https_web"\ncert_file = "c.pem"\nkey_file = "k.pem"\n`,
    '/etc/x/server.conf',
  )
  assert.deepEqual(web.federation?.bundleEndpoint?.profile, {
    type: 'https_web',
    certFile: '/etc/x/c.pem',
    keyFile: '/etc/x/k.pem',
    fileSyncIntervalSeconds: 3600, // SPIRE's default
  })
  assert.equal(parseServerConfig(base, '/etc/x/server.conf').federation?.bundleEndpoint, undefined)
})

test('[server.federation]: what the spec forbids is refused, each problem named', () => {
  const rel = (td: string, url: string, profile: string) =>
    `[server.federation.federates_with."${td}"]\nbundle_endpoint_url = "${url}"\nbundle_endpoint_profile = ${profile}\n`
  assert.match(
    problems(rel('two.test', 'http://x/', '{ type = "https_web" }')),
    /must be an https URL/,
  )
  assert.match(problems(rel('two.test', 'https://u:p@x/', '{ type = "https_web" }')), /userinfo/)
  assert.match(
    problems(rel('one.test', 'https://x/', '{ type = "https_web" }')),
    /our own trust domain/,
  )
  assert.match(
    problems(rel('two.test', 'https://x/', '{ type = "https_spiffe" }')),
    /endpoint_spiffe_id: required/,
  )
  assert.match(
    problems(
      rel('two.test', 'https://x/', '{ type = "https_spiffe", endpoint_spiffe_id = "nope" }'),
    ),
    /not a SPIFFE ID/,
  )
  assert.match(
    problems(rel('two.test', 'https://x/', '{ type = "ftp" }')),
    /must be https_spiffe or https_web/,
  )
  assert.match(
    problems(rel('Bad_TD', 'https://x/', '{ type = "https_web" }')),
    /not a valid trust domain/,
  )
  assert.match(
    problems('[server.federation.bundle_endpoint]\nprofile = "https_web"\n'),
    /cert_file: required/,
  )
  assert.match(
    problems('[server.federation.bundle_endpoint]\ncert_file = "c.pem"\n'),
    /apply to profile https_web only/,
  )
  assert.match(problems('[server.federation]\nbogus = 1\n'), /bogus: unknown key/)
})
