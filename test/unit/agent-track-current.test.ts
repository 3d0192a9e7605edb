import assert from 'node:assert/strict'
import { test } from 'node:test'
import { trackCurrent } from '../../src/agent/tpm-hsm.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key, KeyManager, KeyType } from '../../src/keymanager/types.js'

// The TPM agent wires IdentityKeeper to trackCurrent(TpmKeyManager).keyManager (plugins.ts). The
// keeper uses generateKeyEarly only when the manager it is given has it: the wrapper must pass it
// through (and note the key as current, which the attestor certifies), or the early key-file
// write of aaf36c2 never runs in the agent.
test('trackCurrent passes generateKeyEarly through and tracks the key it makes', async () => {
  const mem = new MemoryKeyManager()
  let early = 0
  const inner: KeyManager = {
    generateKey: (id, t) => mem.generateKey(id, t),
    async generateKeyEarly(id: string, t: KeyType) {
      early++
      return { key: await mem.generateKey(id, t), stored: Promise.resolve() }
    },
    getKey: (id) => mem.getKey(id),
    listKeys: () => mem.listKeys(),
    deleteKey: (id) => mem.deleteKey(id),
  }
  const tracked = trackCurrent<Key>(inner)
  assert.equal(typeof tracked.keyManager.generateKeyEarly, 'function')
  const { key, stored } = await tracked.keyManager.generateKeyEarly!('k1', 'ec-p256')
  await stored
  assert.equal(early, 1)
  assert.equal(tracked.current(), key)
})
