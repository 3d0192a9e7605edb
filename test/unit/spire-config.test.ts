import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import { readConfigText } from '../../src/cli/config-source.js'
import { convertSpireConfig, expandEnv, looksLikeHcl } from '../../src/cli/spire-config.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import { parseServerConfig } from '../../src/server/config.js'
import { repoRoot } from '../helpers/exec.js'

const fixture = (name: string) => join(repoRoot, 'test/fixtures/spire', name)
const ENV = { SERVER_PORT: '8081', HEALTH_PORT: '8080', STATE: '/run/spire' }

test("SPIRE's quickstart server.conf maps onto ours, with what differs said", async () => {
  const text = expandEnv(readFileSync(fixture('server.conf'), 'utf8'), ENV, 'server.conf')
  assert.ok(looksLikeHcl(text))
  const c = await convertSpireConfig(text, '/etc/spire/server.conf')
  assert.equal(c.kind, 'server')
  assert.deepEqual(c.unmapped, [])
  assert.ok(c.notes.some((n) => /ca_subject: ignored/.test(n)))
  assert.ok(c.notes.some((n) => /embedded SQLite/.test(n)))
  const cfg = parseServerConfig(c.toml, '/etc/spire/server.conf')
  assert.equal(cfg.trustDomain, 'example.org')
  assert.equal(cfg.bindPort, 8081)
  assert.equal(cfg.adminSocket, '/run/spire/server/private/api.sock')
  assert.equal(cfg.dataDir, '/etc/spire/data/server')
  assert.equal(cfg.datastorePath, '/etc/spire/data/server/datastore.sqlite3')
  assert.equal(cfg.logLevel, 'debug')
  assert.equal(cfg.upstream?.certFile, '/etc/spire/conf/server/dummy_upstream_ca.crt')
  assert.deepEqual(cfg.healthChecks, {
    bindAddress: '127.0.0.1',
    bindPort: 8080,
    livePath: '/live',
    readyPath: '/ready',
  })
})

test("SPIRE's quickstart agent.conf maps onto ours (server_address + server_port)", async () => {
  const text = expandEnv(readFileSync(fixture('agent.conf'), 'utf8'), ENV, 'agent.conf')
  const c = await convertSpireConfig(text, '/etc/spire/agent.conf')
  assert.equal(c.kind, 'agent')
  assert.deepEqual(c.unmapped, [])
  const cfg = parseAgentConfig(c.toml, '/etc/spire/agent.conf')
  assert.equal(cfg.serverAddress, '127.0.0.1:8081')
  assert.equal(cfg.socketPath, '/run/spire/agent/public/api.sock')
  assert.equal(cfg.trustBundlePath, '/etc/spire/conf/agent/dummy_root_ca.crt')
  assert.equal(cfg.logLevel, 'debug')
})

test('what has no equivalent is listed, never dropped', async () => {
  const c = await convertSpireConfig(
    `server {
  trust_domain = "example.org"
  jwt_issuer = "https://oidc.example.org"
  ca_key_type = "ec-p521"
  ratelimit {
    attestation = false
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "postgres"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  Notifier "k8sbundle" {
    plugin_data {}
  }
}
telemetry {
  Prometheus {
    port = 9988
  }
  Statsd = []
}
`,
    'x.conf',
  )
  const joined = c.unmapped.join('\n')
  for (const k of ['ca_key_type', 'postgres|embedded SQLite', 'Notifier', 'telemetry.Statsd'])
    assert.match(joined, new RegExp(k), k)
  // SPIRE's Prometheus sink maps; ratelimit.attestation = false lifts the per-address limit.
  assert.match(c.toml, /\[telemetry.Prometheus\]\nport = 9988/)
  assert.match(c.toml, /attest_rate_per_second = 10000/)
  // jwt_issuer has the same meaning here (the iss of JWT-SVIDs): copied, not listed.
  assert.doesNotMatch(joined, /jwt_issuer/)
  assert.match(c.toml, /jwt_issuer = "https:\/\/oidc\.example\.org"/)
})

test('run and validate refuse an HCL file with unmapped settings, naming each (ERR_CONFIG)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-spirecfg-'))
  try {
    const f = join(dir, 'server.conf')
    writeFileSync(
      f,
      'server {\n  trust_domain = "example.org"\n  federation {\n    bundle_endpoint {\n      port = 8443\n      profile "https_web" {\n        acme {\n          domain_name = "example.org"\n        }\n      }\n    }\n  }\n}\nplugins {\n  NodeAttestor "join_token" {\n    plugin_data {}\n  }\n}\n',
    )
    await assert.rejects(
      readConfigText(f, 'server'),
      (e: unknown) =>
        e instanceof SpiffeEdgeError &&
        e.code === 'ERR_CONFIG' &&
        /server\.federation/.test(e.message),
    )
    await assert.rejects(
      readConfigText(f, 'agent'),
      (e: unknown) =>
        e instanceof SpiffeEdgeError && /SPIRE's server config, not the agent's/.test(e.message),
    )
    writeFileSync(f, 'server {\n  trust_domain = "$NOPE_NOT_SET"\n}\n')
    await assert.rejects(
      readConfigText(f, 'server', { expandEnv: true, env: {} }),
      (e: unknown) => e instanceof SpiffeEdgeError && /\$NOPE_NOT_SET is not set/.test(e.message),
    )
    writeFileSync(f, 'server {\n  trust_domain = \n')
    await assert.rejects(
      readConfigText(f, 'server'),
      (e: unknown) => e instanceof SpiffeEdgeError && /not valid HCL/.test(e.message),
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test("SPIRE's federation block maps onto [server.federation]; ACME and old forms are listed", async () => {
  const c = await convertSpireConfig(
    `server {
  trust_domain = "example.org"
  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = 8443
      refresh_hint = "10m"
      profile "https_web" {
        serving_cert_file {
          cert_file_path = "/etc/spire/web.pem"
          key_file_path = "/etc/spire/web.key"
          file_sync_interval = "30m"
        }
      }
    }
    federates_with "domain1.test" {
      bundle_endpoint_url = "https://1.2.3.4:8443"
      bundle_endpoint_profile "https_web" {}
    }
    federates_with "domain2.test" {
      bundle_endpoint_url = "https://5.6.7.8:8443"
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = "spiffe://domain2.test/beserver"
      }
    }
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`,
    '/etc/spire/server.conf',
  )
  assert.deepEqual(c.unmapped, [])
  const cfg = parseServerConfig(c.toml, '/etc/spire/server.conf')
  assert.deepEqual(cfg.federation?.bundleEndpoint, {
    address: '127.0.0.1',
    port: 8443,
    refreshHintSeconds: 600,
    profile: {
      type: 'https_web',
      certFile: '/etc/spire/web.pem',
      keyFile: '/etc/spire/web.key',
      fileSyncIntervalSeconds: 1800,
    },
  })
  assert.deepEqual(cfg.federation?.federatesWith, [
    {
      trustDomain: 'domain1.test',
      bundleEndpointUrl: 'https://1.2.3.4:8443',
      profile: { type: 'https_web' },
    },
    {
      trustDomain: 'domain2.test',
      bundleEndpointUrl: 'https://5.6.7.8:8443',
      profile: { type: 'https_spiffe', endpointSpiffeId: 'spiffe://domain2.test/beserver' },
    },
  ])
  const spiffe = await convertSpireConfig(
    `server {
  trust_domain = "example.org"
  federation {
    bundle_endpoint {
      port = 8443
      profile "https_spiffe" {}
    }
  }
}
`,
    's.conf',
  )
  assert.deepEqual(spiffe.unmapped, [])
  assert.equal(
    parseServerConfig(spiffe.toml, 's.conf').federation?.bundleEndpoint?.profile.type,
    'https_spiffe',
  )
  const rest = await convertSpireConfig(
    `server {
  trust_domain = "example.org"
  federation {
    bundle_endpoint {
      port = 8443
      profile "https_web" {
        acme {
          domain_name = "example.org"
          email = "mail@example.org"
        }
      }
    }
    federates_with "old.test" {
      bundle_endpoint {
        address = "1.2.3.4"
        port = 8443
      }
    }
  }
}
`,
    'r.conf',
  )
  const joined = rest.unmapped.join('\n')
  assert.match(joined, /profile "https_web"\.acme: ACME is not supported/)
  assert.match(joined, /federates_with "old\.test"\.bundle_endpoint: SPIRE's old form/)
})
