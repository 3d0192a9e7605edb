/**
 * What one TPM attestation asks of the TPM (real swtpm, the real server attestor): the SRK is
 * created once for the attempt, the AK and the agent key are loaded once (the key manager signs
 * the CSR with the held key), and every object is flushed at the end. Between payload and
 * challenge the attempt holds two of swtpm's three object slots; another user who needs two more
 * gets them (the attempt's objects are flushed and its answer reloads them), and a refused attempt
 * gives both back when the transport ends it.
 */
import assert from 'node:assert/strict'
import { verify } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../../src/attestors/tpm/agent.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import type { AttestorState } from '../../src/attestors/types.js'
import { type TpmKey, TpmKeyManager, withTpm } from '../../src/keymanager/tpm.js'
import { setTpmCommandObserver } from '../../src/tpm/command-observer.js'
import { TpmContext } from '../../src/tpm/context.js'

function memoryState(): AttestorState {
  const m = new Map<string, string>()
  return {
    get: async (p) => m.get(p),
    set: async (p, v) => {
      m.set(p, v)
    },
  }
}

test('one TPM attestation: SRK created once, AK and agent key loaded once, the CSR signed with the held key, all flushed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const key = await new TpmKeyManager(tpm, join(dir, 'keys')).generateKey('agent', 'ec-p256')
  const dataDir = join(dir, 'agent')
  const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
  const server = tpmServerAttestor(cfg)
  const ctx = () => ({
    trustDomain: 'example.org',
    now: new Date(),
    agentPublicKey: key.publicKey,
    state: memoryState(),
  })
  // A first attestation makes and stores the AK; the counted one reuses it, as restarts do.
  const first = tpmAgentAttestor({ tpm, dataDir, agentKey: () => key })
  await server.attest(await first.payload(), (c) => first.respond(c), ctx())
  await first.end?.()

  const counts = new Map<string, number>()
  const prev = setTpmCommandObserver((command) => {
    counts.set(command, (counts.get(command) ?? 0) + 1)
  })
  t.after(() => setTpmCommandObserver(prev))
  const agent = tpmAgentAttestor({ tpm, dataDir, agentKey: () => key })
  const payload = await agent.payload()
  // Held for the challenge: the AK and the agent key (the SRK is flushed), and the key manager
  // signs with the held key.
  assert.equal(await tpm.loadedTransientCount(), 2)
  await key.sign(new Uint8Array(Buffer.from('the CSR')))
  const result = await server.attest(payload, (c) => agent.respond(c), ctx())
  await agent.end?.()
  setTpmCommandObserver(prev)
  assert.match(result.agentPath, /^\/spire\/agent\/tpm\//)
  assert.equal(counts.get('createPrimary'), 1, 'the SRK once, shared with the CSR signature')
  assert.equal(counts.get('load'), 2, 'the AK and the agent key once each: the CSR borrows the key')
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test('a load that finds no free slot during the round trip gets one: the attempt reloads for its answer', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const key = await keys.generateKey('agent', 'ec-p256')
  const other = await keys.generateKey('other', 'ec-p256')
  const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
  const server = tpmServerAttestor(cfg)
  const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
  const payload = await agent.payload()
  assert.equal(await tpm.loadedTransientCount(), 2)
  // Another key's signature (a cache key, say) needs the SRK and its key: four slots of three.
  const msg = new Uint8Array(Buffer.from('not the CSR'))
  const sig = await other.sign(msg)
  assert.equal(
    verify('sha256', msg, { key: other.publicKey, dsaEncoding: 'ieee-p1363' }, sig),
    true,
  )
  assert.equal(await tpm.loadedTransientCount(), 0, "the attempt's AK and key made room")
  const loads = new Map<string, number>()
  const prev = setTpmCommandObserver((command) => loads.set(command, (loads.get(command) ?? 0) + 1))
  t.after(() => setTpmCommandObserver(prev))
  const result = await server.attest(payload, (c) => agent.respond(c), {
    trustDomain: 'example.org',
    now: new Date(),
    agentPublicKey: key.publicKey,
    state: memoryState(),
  })
  setTpmCommandObserver(prev)
  await agent.end?.()
  assert.match(result.agentPath, /^\/spire\/agent\/tpm\//)
  assert.equal(loads.get('load'), 2, 'the answer loaded the AK and the agent key again')
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test('a TPM attempt refused after its payload gives its AK and agent key back when it ends', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const key = await new TpmKeyManager(tpm, join(dir, 'keys')).generateKey('agent', 'ec-p256')
  for (let i = 0; i < 3; i++) {
    // Each attempt a new attestor (an agent restart): none may leave objects behind.
    const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
    await agent.payload()
    assert.equal(await tpm.loadedTransientCount(), 2)
    await agent.end?.()
    assert.equal(await tpm.loadedTransientCount(), 0)
  }
  // A second payload on the same attestor replaces the first attempt's objects.
  const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
  await agent.payload()
  await agent.payload()
  assert.equal(await tpm.loadedTransientCount(), 2)
  await agent.end?.()
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test('key generation hands its SRK to the attestor: one CreatePrimary from agent key to SVID', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const dataDir = join(dir, 'agent')
  const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
  const server = tpmServerAttestor(cfg)
  const counts = new Map<string, number>()
  const prev = setTpmCommandObserver((command) => {
    counts.set(command, (counts.get(command) ?? 0) + 1)
  })
  t.after(() => setTpmCommandObserver(prev))
  for (let i = 0; i < 2; i++) {
    // Wired as the agent does (src/agent/plugins.ts); the second round is a restart.
    const keys = new TpmKeyManager(tpm, join(dir, `keys-${i}`))
    let key: TpmKey | undefined
    const agent = tpmAgentAttestor({ tpm, dataDir, agentKey: () => key! })
    keys.handOffSrk = (srk) => agent.adoptSrk(srk)
    counts.clear()
    key = await keys.generateKey('agent', 'ec-p256')
    // The SRK stays loaded for the attestation that follows; nothing else.
    assert.equal(await tpm.loadedTransientCount(), 1)
    const payload = await agent.payload()
    assert.equal(await tpm.loadedTransientCount(), 2)
    await key.sign(new Uint8Array(Buffer.from('the CSR')))
    const k = key
    const result = await server.attest(payload, (c) => agent.respond(c), {
      trustDomain: 'example.org',
      now: new Date(),
      agentPublicKey: k.publicKey,
      state: memoryState(),
    })
    await agent.end?.()
    assert.match(result.agentPath, /^\/spire\/agent\/tpm\//)
    if (i === 1) assert.equal(counts.get('createPrimary'), 1, 'one SRK for keygen and attestation')
    assert.equal(await tpm.loadedTransientCount(), 0)
  }
})

test('an SRK handed over by key generation is flushed when no payload takes it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
  keys.handOffSrk = (srk) => agent.adoptSrk(srk)
  const key = await keys.generateKey('agent', 'ec-p256')
  // A rotation's second key: the attestor keeps one SRK reference, not two.
  await keys.generateKey('agent2', 'ec-p256')
  assert.equal(await tpm.loadedTransientCount(), 1)
  await agent.end?.()
  assert.equal(await tpm.loadedTransientCount(), 0)
  // And without end(): it goes by itself shortly (a key rotation with no attestation after it).
  await keys.generateKey('agent3', 'ec-p256')
  assert.equal(await tpm.loadedTransientCount(), 1)
  const deadline = Date.now() + 5000
  while ((await tpm.loadedTransientCount()) !== 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.equal(await tpm.loadedTransientCount(), 0)
})

test("the round trip prepares the answer: the EK's policy session starts before the challenge, the answer uses it, and every end flushes it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-cmds-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  // swtpm's EK is persistent: the round trip also opens its reference.
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const key = await new TpmKeyManager(tpm, join(dir, 'keys')).generateKey('agent', 'ec-p256')
  const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
  const server = tpmServerAttestor(cfg)
  const ctx = () => ({
    trustDomain: 'example.org',
    now: new Date(),
    agentPublicKey: key.publicKey,
    state: memoryState(),
  })
  // Loaded policy sessions (TPM_HT_POLICY_SESSION).
  const sessions = async () => (await tpm.listHandles(0x03000000)).length
  const order: string[] = []
  const prev = setTpmCommandObserver((command) => {
    order.push(command)
  })
  t.after(() => setTpmCommandObserver(prev))

  const agent = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
  const payload = await agent.payload()
  agent.payloadSent?.()
  const starts = () => order.filter((c) => c === 'startPolicySession').length
  const result = await server.attest(
    payload,
    async (c) => {
      // The preparation queued on the TPM lock when the payload went: behind it, it is done.
      await withTpm(tpm, async () => undefined)
      assert.equal(starts(), 1, 'the policy session was started during the round trip')
      return agent.respond(c)
    },
    ctx(),
  )
  await agent.end?.()
  setTpmCommandObserver(prev)
  assert.match(result.agentPath, /^\/spire\/agent\/tpm\//)
  assert.equal(starts(), 1, 'the answer used it and started none')
  assert.equal(await sessions(), 0, 'the used session is flushed')
  assert.equal(await tpm.loadedTransientCount(), 0)

  // An attempt that gets no challenge: end() flushes its prepared session with its AK and key.
  const unanswered = tpmAgentAttestor({ tpm, dataDir: join(dir, 'agent'), agentKey: () => key })
  await unanswered.payload()
  unanswered.payloadSent?.()
  await unanswered.end?.()
  assert.equal(await sessions(), 0)
  assert.equal(await tpm.loadedTransientCount(), 0)
})
