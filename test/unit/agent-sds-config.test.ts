import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'

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
