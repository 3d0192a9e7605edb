import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import { convertSpireConfig } from '../../src/cli/spire-config.js'

const base = (sds: string) =>
  `[agent]\ntrust_domain = "example.org"\ninsecure_bootstrap = true\n${sds}\n` +
  '[plugins.NodeAttestor.join_token]\n[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n'

test('[agent.sds] takes SPIRE keys, defaulting to default, ROOTCA and ALL', () => {
  assert.deepEqual(parseAgentConfig(base(''), '/etc/agent.conf').sds, {
    defaultSvidName: 'default',
    defaultBundleName: 'ROOTCA',
    defaultAllBundlesName: 'ALL',
    disableSpiffeCertValidation: false,
  })
  const c = parseAgentConfig(
    base(
      '[agent.sds]\ndefault_svid_name = "svid"\ndefault_bundle_name = "ca"\ndefault_all_bundles_name = "every"\ndisable_spiffe_cert_validation = true',
    ),
    '/etc/agent.conf',
  )
  assert.deepEqual(c.sds, {
    defaultSvidName: 'svid',
    defaultBundleName: 'ca',
    defaultAllBundlesName: 'every',
    disableSpiffeCertValidation: true,
  })
})

test('[agent.sds] refuses unknown keys, clashing names and spiffe:// names', () => {
  assert.throws(
    () => parseAgentConfig(base('[agent.sds]\ndefault_name = "x"'), 'a.conf'),
    /agent\.sds\.default_name: unknown key/,
  )
  assert.throws(
    () => parseAgentConfig(base('[agent.sds]\ndefault_bundle_name = "ALL"'), 'a.conf'),
    /must differ/,
  )
  assert.throws(
    () =>
      parseAgentConfig(base('[agent.sds]\ndefault_svid_name = "spiffe://example.org/x"'), 'a.conf'),
    /spiffe:\/\//,
  )
})

test("SPIRE's agent `sds { … }` block converts to [agent.sds]", async () => {
  const hcl = `agent {
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    trust_bundle_path = "/etc/bundle.pem"
    sds {
        default_svid_name = "my_svid"
        default_bundle_name = "my_ca"
        default_all_bundles_name = "my_all"
        disable_spiffe_cert_validation = true
        no_such_key = 1
    }
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "/var/lib/agent"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`
  const c = await convertSpireConfig(hcl, '/etc/spire/agent.conf')
  assert.deepEqual(c.unmapped, ['agent.sds.no_such_key: not supported by spiffe-edge'])
  assert.deepEqual(parseAgentConfig(c.toml, '/etc/spire/agent.conf').sds, {
    defaultSvidName: 'my_svid',
    defaultBundleName: 'my_ca',
    defaultAllBundlesName: 'my_all',
    disableSpiffeCertValidation: true,
  })
})
