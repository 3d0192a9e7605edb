/**
 * When the agent's new key is stored, relative to the attestation (IdentityKeeper.attest): beside
 * the call for evidence that can be sent again, before it for single-use evidence (a join token),
 * and in both cases the SVID is saved only once the key file is durable.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { IdentityKeeper } from '../../src/agent/cache/identity.js'
import { AgentStorage } from '../../src/agent/storage.js'
import type { AgentNodeAttestor } from '../../src/attestors/types.js'
import { silentLog } from '../../src/common/log.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key, KeyManager, KeyType } from '../../src/keymanager/types.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'
import type { AttestResult, NodeClient } from '../../src/transport/node-client.js'

const td = TrustDomain.parse('example.org')

/** A key manager whose key-file write fails, the way a full disk makes it fail. */
function failingWrites(): KeyManager & { deleted: string[] } {
  const mem = new MemoryKeyManager()
  const deleted: string[] = []
  const diskFull = () => new Error('ENOSPC: no space left on device')
  return {
    deleted,
    generateKey: async () => {
      throw diskFull()
    },
    async generateKeyEarly(id: string, type: KeyType) {
      const key = await mem.generateKey(id, type)
      const stored = new Promise<void>((_, reject) => setTimeout(() => reject(diskFull()), 20))
      stored.catch(() => undefined)
      return { key, stored }
    },
    getKey: (id) => mem.getKey(id),
    listKeys: () => mem.listKeys(),
    deleteKey: async (id) => {
      deleted.push(id)
      await mem.deleteKey(id)
    },
  }
}

async function svidFor(key: Key): Promise<AttestResult> {
  const ca = await new MemoryKeyManager().generateKey('ca', 'ec-p256')
  const notBefore = new Date(Date.now() - 60e3)
  const notAfter = new Date(Date.now() + 3600e3)
  const caDer = await issueX509Ca({
    subjectPublicKey: ca.publicKey,
    trustDomain: td,
    selfSigner: ca,
    notBefore,
    notAfter,
  })
  const leaf = await issueX509Svid({
    subjectPublicKey: key.publicKey,
    spiffeId: SpiffeId.parse('spiffe://example.org/spire/agent/test/node'),
    issuer: { certificate: caDer, signer: ca },
    notBefore,
    notAfter,
  })
  return {
    svid: { spiffeId: 'spiffe://example.org/spire/agent/test/node', certChain: [leaf] },
    bundle: new TrustBundle({ trustDomain: td, x509Authorities: [caDer] }),
    reattestable: true,
    selectors: [],
  } as unknown as AttestResult
}

function keeper(t: { after: (fn: () => void) => void }, attestor: AgentNodeAttestor) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-identity-'))
  const { storage } = AgentStorage.open(join(dir, 'agent.db'))
  t.after(() => {
    storage.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const keys = failingWrites()
  const calls: string[] = []
  const client = {
    async attestAgent(_a: AgentNodeAttestor, key: Key) {
      calls.push('attest')
      return svidFor(key)
    },
  } as unknown as NodeClient
  const k = new IdentityKeeper({
    client,
    storage,
    keyManager: keys,
    attestor,
    log: silentLog,
    now: () => Date.now(),
    random: () => 0.5,
    availabilityTargetMs: 0,
  })
  return { k, keys, calls, storage }
}

const attestor = (singleUse: boolean): AgentNodeAttestor => ({
  kind: 'NodeAttestor',
  name: singleUse ? 'join_token' : 'tpm',
  singleUse,
  payload: async () => new Uint8Array(),
  respond: async () => new Uint8Array(),
})

test('re-sendable evidence: the key file is written beside the call, and a failed write keeps no SVID', async (t) => {
  const { k, keys, calls, storage } = keeper(t, attestor(false))
  await assert.rejects(k.attest(), /ENOSPC/)
  assert.deepEqual(calls, ['attest'], 'the attestation ran while the key was written')
  assert.equal(k.current, undefined)
  assert.equal(storage.load().agentSvid, undefined, 'no SVID saved for a key that is not kept')
  assert.equal(keys.deleted.length, 1, 'the unkept key is deleted')
})

test('single-use evidence (a join token): a failed key-file write comes before the token is sent', async (t) => {
  const { k, calls } = keeper(t, attestor(true))
  await assert.rejects(k.attest(), /ENOSPC/)
  assert.deepEqual(calls, [], 'the token was never spent')
  assert.equal(k.current, undefined)
})
