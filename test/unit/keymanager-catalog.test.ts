import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { parseAgentConfig } from '../../src/agent/config.js'
import { KEY_MANAGERS as AGENT_KEY_MANAGERS } from '../../src/agent/plugins.js'
import { buildKeyManager } from '../../src/keymanager/catalog.js'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { parsePkcs11Config } from '../../src/keymanager/pkcs11/config.js'
import { parseServerConfig } from '../../src/server/config.js'
import { KEY_MANAGERS as SERVER_KEY_MANAGERS } from '../../src/server/plugins.js'

const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-km-catalog-'))
after(() => rmSync(dir, { recursive: true, force: true }))

const server = (plugins: string) =>
  parseServerConfig(
    `[server]\ntrust_domain = "example.org"\ndata_dir = "data"\n${plugins}`,
    join(dir, 'server.conf'),
  )

test('key managers come from a catalog per process; an unknown one is refused listing what exists', async () => {
  assert.deepEqual([...SERVER_KEY_MANAGERS.keys()], ['disk', 'memory', 'pkcs11'])
  assert.deepEqual([...AGENT_KEY_MANAGERS.keys()], ['disk', 'memory', 'pkcs11'])
  const c = server('[plugins.KeyManager.vault]\naddress = "x"\n')
  assert.equal(c.keyManager.name, 'vault')
  await assert.rejects(
    buildKeyManager(SERVER_KEY_MANAGERS, c.keyManager, 'server'),
    (e: Error & { code?: string }) =>
      e.code === 'ERR_CONFIG' &&
      /vault: unknown key manager \(this server has: disk, memory, pkcs11\)/.test(e.message),
  )
  const a = parseAgentConfig(
    '[agent]\ntrust_domain = "example.org"\ninsecure_bootstrap = true\n[plugins.KeyManager.aws_kms]\n',
    join(dir, 'agent.conf'),
  )
  await assert.rejects(
    buildKeyManager(AGENT_KEY_MANAGERS, a.keyManager, 'agent'),
    /aws_kms: unknown key manager \(this agent has: disk, memory, pkcs11\)/,
  )
})

test('disk: the directory defaults to <data_dir>/keys and resolves against the config folder', async () => {
  const def = await buildKeyManager(SERVER_KEY_MANAGERS, server('').keyManager, 'server')
  assert.equal(def.directory, join(dir, 'data', 'keys'))
  assert.ok(def.keyManager instanceof DiskKeyManager)
  assert.equal(def.persistent, true)
  const rel = await buildKeyManager(
    SERVER_KEY_MANAGERS,
    server('[plugins.KeyManager.disk]\ndirectory = "k"\n').keyManager,
    'server',
  )
  assert.equal(rel.directory, join(dir, 'k'))
  await assert.rejects(
    buildKeyManager(
      SERVER_KEY_MANAGERS,
      server('[plugins.KeyManager.disk]\ndirectroy = "k"\n').keyManager,
      'server',
    ),
    /directroy: unknown key/,
  )
  const mem = await buildKeyManager(
    SERVER_KEY_MANAGERS,
    server('[plugins.KeyManager.memory]\n').keyManager,
    'server',
  )
  assert.ok(mem.keyManager instanceof MemoryKeyManager)
  assert.equal(mem.persistent, false)
  await assert.rejects(
    buildKeyManager(
      SERVER_KEY_MANAGERS,
      server('[plugins.KeyManager.memory]\nx = 1\n').keyManager,
      'server',
    ),
    /takes no settings/,
  )
})

test('pkcs11 config: a PIN in the config is refused; pin_file must be 0600; pin_env must be set', () => {
  const base = { module_path: '/usr/lib/softhsm/libsofthsm2.so', token_label: 't' }
  assert.throws(
    () => parsePkcs11Config({ ...base, pin: '1234' }, dir),
    (e: Error & { code?: string }) =>
      e.code === 'ERR_CONFIG' && /a PIN in the config is refused/.test(e.message),
  )
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, '1234\n', { mode: 0o644 })
  chmodSync(pinFile, 0o644)
  assert.throws(() => parsePkcs11Config({ ...base, pin_file: 'pin' }, dir), /chmod 600/)
  chmodSync(pinFile, 0o600)
  const o = parsePkcs11Config({ ...base, pin_file: 'pin' }, dir)
  assert.equal(o.pin, '1234', 'one trailing newline is not part of the PIN')
  assert.deepEqual(o.token, { label: 't' })
  assert.equal(o.keyLabelPrefix, 'spiffe-edge')
  assert.equal(o.maxSessions, 4)
  assert.throws(
    () => parsePkcs11Config({ ...base, pin_env: 'SPIFFE_EDGE_TEST_NO_SUCH_PIN' }, dir, {}),
    /SPIFFE_EDGE_TEST_NO_SUCH_PIN is not set/,
  )
  const e = parsePkcs11Config(
    { module_path: 'lib.so', token_serial: 'abc', pin_env: 'P', key_label_prefix: 'srv-1' },
    dir,
    { P: 'secret' },
  )
  assert.equal(e.pin, 'secret')
  assert.deepEqual(e.token, { serial: 'abc' })
  assert.equal(e.modulePath, join(dir, 'lib.so'))
  assert.equal(e.keyLabelPrefix, 'srv-1')
  assert.throws(
    () =>
      parsePkcs11Config(
        { module_path: 'x', token_label: 'a', token_serial: 'b', pin_env: 'P' },
        dir,
        { P: 'x' },
      ),
    /exactly one of token_label or token_serial/,
  )
  assert.throws(
    () => parsePkcs11Config({ ...base, pin_env: 'P', pin_file: 'pin' }, dir, { P: 'x' }),
    /exactly one of pin_file or pin_env/,
  )
  assert.throws(
    () => parsePkcs11Config({ ...base, pin_env: 'P', key_label_prefix: 'a/b' }, dir, { P: 'x' }),
    /key_label_prefix/,
  )
  assert.throws(
    () => parsePkcs11Config({ ...base, pin_env: 'P', slot: 0 }, dir, { P: 'x' }),
    /slot: unknown key/,
  )
})
