import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { cli } from '../helpers/exec.js'

test('cli: keys test and list on a SoftHSM2 token from a server config; a wrong PIN is ERR_PKCS11_PIN', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-keys-cli-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'cli' })
  const env = { ...process.env, SOFTHSM2_CONF: token.env.SOFTHSM2_CONF, HSM_PIN: token.pin }
  const conf = join(dir, 'server.conf')
  const write = (pinEnv: string) =>
    writeFileSync(
      conf,
      `[server]\ntrust_domain = "example.org"\ndata_dir = "./data"\n[plugins.KeyManager.pkcs11]\n` +
        `module_path = "${token.modulePath}"\ntoken_label = "cli"\npin_env = "${pinEnv}"\nkey_label_prefix = "ops"\n`,
    )
  write('HSM_PIN')

  const tested = await cli(['keys', 'test', '--config', conf, '--type', 'ec-p384', '--json'], env)
  assert.equal(tested.code, 0, tested.stderr)
  const r = JSON.parse(tested.stdout) as Record<string, unknown>
  assert.equal(r.role, 'server')
  assert.equal(r.key_manager, 'pkcs11')
  assert.equal(r.key_type, 'ec-p384')
  assert.equal(r.verified, true)
  assert.match(String(r.label), /^ops\/keys-test-[0-9a-f]{8}$/)
  // The throwaway key is gone again.
  const empty = await cli(['keys', 'list', '--config', conf, '--json'], env)
  assert.equal(empty.code, 0, empty.stderr)
  assert.deepEqual(JSON.parse(empty.stdout).keys, [])

  const bad = join(dir, 'pin')
  writeFileSync(bad, 'wrong\n', { mode: 0o600 })
  chmodSync(bad, 0o600)
  writeFileSync(
    conf,
    `[server]\ntrust_domain = "example.org"\n[plugins.KeyManager.pkcs11]\nmodule_path = "${token.modulePath}"\n` +
      `token_label = "cli"\npin_file = "pin"\n`,
  )
  const refused = await cli(['keys', 'list', '--config', conf], env)
  assert.equal(refused.code, 1)
  assert.match(refused.stderr, /ERR_PKCS11_PIN/)
  write('NO_SUCH_PIN_VARIABLE')
  const unset = await cli(['keys', 'list', '--config', conf], env)
  assert.equal(unset.code, 1)
  assert.match(unset.stderr, /ERR_CONFIG/)
  assert.match(unset.stderr, /NO_SUCH_PIN_VARIABLE is not set/)
})

test('cli: keys list and test --key on a disk key manager from an agent config', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-keys-cli-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const conf = join(dir, 'agent.conf')
  writeFileSync(
    conf,
    '[agent]\ntrust_domain = "example.org"\ninsecure_bootstrap = true\ndata_dir = "./a"\n[plugins.KeyManager.disk]\n',
  )
  const listed = await cli(['keys', 'list', '--config', conf])
  assert.equal(listed.code, 0, listed.stderr)
  assert.match(listed.stdout, /agent key manager disk: 0 key\(s\)/)
  const missing = await cli(['keys', 'test', '--config', conf, '--key', 'nope'])
  assert.equal(missing.code, 1)
  assert.match(missing.stderr, /ERR_KEY_MANAGER/)
  const tested = await cli(['keys', 'test', '--config', conf])
  assert.equal(tested.code, 0, tested.stderr)
  assert.match(tested.stdout, /signature verified/)
})
