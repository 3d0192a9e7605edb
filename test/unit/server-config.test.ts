import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseDuration } from '../../src/common/config.js'
import { parseServerConfig } from '../../src/server/config.js'
import { groupId } from '../../src/server/server.js'

const base = '[server]\ntrust_domain = "example.org"\n'

test('defaults follow SPIRE and paths resolve against the config file', () => {
  const c = parseServerConfig(base, '/etc/spiffe-edge/server.conf')
  assert.equal(c.caTtlSeconds, 86400)
  assert.equal(c.defaultX509SvidTtlSeconds, 3600)
  assert.equal(c.defaultJwtSvidTtlSeconds, 300)
  assert.equal(c.dataDir, '/etc/spiffe-edge/data')
  // Absolute and shared with the CLI, as spire-server's /tmp/spire-server/private/api.sock.
  assert.equal(c.adminSocket, '/tmp/spiffe-edge-server/private/api.sock')
  assert.deepEqual([...c.nodeAttestors.keys()], ['join_token'])
  assert.deepEqual(c.keyManager, {
    name: 'disk',
    data: {},
    dataDir: '/etc/spiffe-edge/data',
    configDir: '/etc/spiffe-edge',
  })
})

test('flags override the file', () => {
  const c = parseServerConfig(base, '/x/server.conf', {
    dataDir: '/tmp/d',
    trustDomain: 'other.org',
    bindPort: 0,
    adminSocket: '/tmp/a.sock',
  })
  assert.equal(c.trustDomain, 'other.org')
  assert.equal(c.dataDir, '/tmp/d')
  assert.equal(c.bindPort, 0)
  assert.equal(c.adminSocket, '/tmp/a.sock')
})

test('every problem is reported at once, unknown keys included', () => {
  const text =
    '[server]\ntrust_domain = "Not Valid"\nca_ttl = "soon"\nbind_port = -1\nlog_levle = "info"\n[plugins]\nKeyManager = { disk = {}, memory = {} }\n[bogus]\n'
  assert.throws(
    () => parseServerConfig(text, 'server.conf'),
    (e: unknown) => {
      const problems = (e as { problems: string[]; code: string }).problems
      assert.equal((e as { code: string }).code, 'ERR_CONFIG')
      for (const k of ['trust_domain', 'ca_ttl', 'bind_port', 'log_levle', 'KeyManager', 'bogus']) {
        assert.ok(
          problems.some((p) => p.includes(k)),
          k,
        )
      }
      return true
    },
  )
  assert.throws(() => parseServerConfig('[server\n', 'bad.conf'), { code: 'ERR_CONFIG' })
  assert.throws(() => parseServerConfig(`${base}default_x509_svid_ttl = "48h"\n`, 's.conf'), {
    code: 'ERR_CONFIG',
  })
})

test('durations parse like SPIRE config values', () => {
  assert.equal(parseDuration('90s'), 90)
  assert.equal(parseDuration('1h30m'), 5400)
  assert.equal(parseDuration('2d'), 172800)
  for (const bad of ['', '10', 'h', '5 m', '1h 2m', '-1s'])
    assert.equal(parseDuration(bad), undefined, bad)
})

test('admin socket groups resolve by name or number, and an unknown one is a config error', () => {
  assert.equal(groupId('root'), 0)
  assert.equal(groupId('4242'), 4242)
  assert.throws(() => groupId('no-such-group-here'), { code: 'ERR_CONFIG' })
})

test('jwt_issuer: unset by default; an https URL is kept; anything an OIDC client would refuse is a config error', () => {
  assert.equal(parseServerConfig(base, 's.conf').jwtIssuer, undefined)
  const ok = parseServerConfig(`${base}jwt_issuer = "https://oidc.example.org/td"\n`, 's.conf')
  assert.equal(ok.jwtIssuer, 'https://oidc.example.org/td')
  const local = parseServerConfig(`${base}jwt_issuer = "http://127.0.0.1:8443"\n`, 's.conf')
  assert.equal(local.jwtIssuer, 'http://127.0.0.1:8443')
  for (const bad of [
    'oidc.example.org',
    'http://oidc.example.org',
    'https://oidc.example.org/?x=1',
    'https://oidc.example.org/#f',
    'https://u:p@oidc.example.org',
  ]) {
    assert.throws(
      () => parseServerConfig(`${base}jwt_issuer = "${bad}"\n`, 's.conf'),
      (e: Error & { code?: string }) =>
        e.code === 'ERR_CONFIG' && /server\.jwt_issuer/.test(e.message),
      bad,
    )
  }
})

test('the datastore file: <data_dir>/datastore.sqlite3, or [plugins.DataStore.sql] connection_string (a path, never a URI)', () => {
  assert.equal(
    parseServerConfig(base, '/etc/se/server.conf').datastorePath,
    '/etc/se/data/datastore.sqlite3',
  )
  const sql = (body: string) =>
    `${base}[plugins.DataStore.sql]\n${body}\n[plugins.NodeAttestor.join_token]\n`
  assert.equal(
    parseServerConfig(
      sql('database_type = "sqlite3"\nconnection_string = "../shared/ds.sqlite3"'),
      '/etc/se/server.conf',
    ).datastorePath,
    '/etc/shared/ds.sqlite3',
  )
  for (const [body, problem] of [
    ['database_type = "postgres"', /database_type/],
    ['connection_string = "file:/x.db?mode=ro"', /not a file: URI/],
    ['connection_string = "/x.db?_busy_timeout=1"', /not a file: URI/],
    ['connection_string = "/x.db"\nmax_open_conns = 3', /max_open_conns: unknown key/],
  ] as const)
    assert.throws(
      () => parseServerConfig(sql(body), '/etc/se/server.conf'),
      (e: Error) => problem.test(e.message),
      body,
    )
  assert.throws(
    () => parseServerConfig(`${base}[plugins.DataStore.other]\n`, '/etc/se/server.conf'),
    /only \[plugins.DataStore.sql\]/,
  )
})
