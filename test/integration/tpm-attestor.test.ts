import assert from 'node:assert/strict'
import {
  createHash,
  X509Certificate as NodeX509,
  verify as nodeVerify,
  randomBytes,
} from 'node:crypto'
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type TestContext, test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../../src/attestors/tpm/agent.js'
import {
  encodeResponse,
  parseChallenge,
  parseResponse,
  TpmAttestationError,
} from '../../src/attestors/tpm/protocol.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import type { Challenger } from '../../src/attestors/types.js'
import { type Log as Logger, silentLog } from '../../src/common/log.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { TpmKeyManager, tpmKey, withTpm } from '../../src/keymanager/tpm.js'
import type { Signer } from '../../src/keymanager/types.js'
import { adminCall } from '../../src/server/admin-client.js'
import { parseServerConfig } from '../../src/server/config.js'
import { startServer } from '../../src/server/server.js'
import { parsePemCertificates } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { TpmContext } from '../../src/tpm/context.js'
import { readEndorsementKeys } from '../../src/tpm/ek.js'
import { openEk, openSrk } from '../../src/tpm/keys.js'
import { publicKeySpki, TPMA_OBJECT } from '../../src/tpm/structures/public.js'
import { signingKeyTemplate } from '../../src/tpm/templates.js'
import { GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { run } from '../helpers/exec.js'
import {
  attestContext,
  decodeWire as decode,
  encodeWire as encode,
  memoryState,
  rejectsWith,
  replayQuote,
} from '../helpers/tpm-attest.js'

const td = TrustDomain.parse('example.org')
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')
const toml = (s: string) => JSON.stringify(s)

// Cleanups run last-in first-out (TPM contexts close before their swtpm stops).
const stacks = new WeakMap<TestContext, (() => unknown)[]>()
function defer(t: TestContext, fn: () => unknown): void {
  let stack = stacks.get(t)
  if (!stack) {
    const s: (() => unknown)[] = []
    stack = s
    stacks.set(t, s)
    t.after(async () => {
      for (const f of s.reverse()) await f()
    })
  }
  stack.push(fn)
}

async function swtpm(t: TestContext) {
  const sim = await startSwtpm()
  defer(t, () => sim.stop())
  return sim
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-attestor-'))
  defer(t, () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A real server whose only node attestor is tpm, configured by `tpmToml`. */
async function tpmServer(t: TestContext, tpmToml: string, log: Logger = silentLog) {
  const dir = tempDir(t)
  const config = parseServerConfig(
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nca_ttl = "24h"\n` +
      `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\n${tpmToml}\n`,
    join(dir, 'server.conf'),
  )
  const server = await startServer(config, { log })
  defer(t, () => server.close())
  const client = new GrpcNodeClient({
    address: `127.0.0.1:${server.port}`,
    trustDomain: td,
    bundle: 'insecure',
  })
  defer(t, () => client.close())
  return { server, client, dir }
}

/** An agent side on one swtpm: a TPM key manager key and the attestor around it. */
async function tpmAgent(
  t: TestContext,
  tcti: string,
  opts: {
    ekAlgorithm?: 'rsa-2048' | 'ecc-p384' | 'ecc-p256'
    akAlgorithm?: 'ecc-p256' | 'rsa-2048'
    dataDir?: string
    keyType?: 'ec-p256' | 'rsa-2048'
  } = {},
) {
  const dir = opts.dataDir ?? tempDir(t)
  const tpm = await TpmContext.open(tcti)
  defer(t, () => tpm.close())
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const key =
    (await keys.getKey('agent')) ?? (await keys.generateKey('agent', opts.keyType ?? 'ec-p256'))
  const attestor = tpmAgentAttestor({
    tpm,
    dataDir: join(dir, 'agent'),
    ekAlgorithm: opts.ekAlgorithm,
    akAlgorithm: opts.akAlgorithm,
    agentKey: () => key,
  })
  return { tpm, keys, key, attestor, dir }
}

async function ekHash(tpm: TpmContext, alg: string): Promise<string> {
  const r = (await withTpm(tpm, () => readEndorsementKeys(tpm))).find((e) => e.algorithm === alg)
  assert.ok(r?.publicKeySha256)
  return r.publicKeySha256
}

function issuingCaHash(bundleFile: string): string {
  // swtpm's bundle: the root first, then the CA that signs EK certificates.
  const certs = parsePemCertificates(readFileSync(bundleFile, 'utf8'))
  return sha256(certs[1]!)
}

const refused = (tag: RegExp) => (e: unknown) =>
  e instanceof NodeCallError &&
  e.status === 7 &&
  e.reason === 'attestation_failed' &&
  tag.test(e.message)

for (const c of [
  { ek: 'rsa-2048', ak: 'ecc-p256', key: 'ec-p256' },
  { ek: 'ecc-p384', ak: 'rsa-2048', key: 'rsa-2048' },
  { ek: 'rsa-2048', ak: 'rsa-2048', key: 'ec-p256' },
] as const) {
  test(`a ${c.ek} EK with a ${c.ak} AK attests; the SVID is for the ${c.key} TPM key; re-attestation keeps the ID and AK`, async (t) => {
    const sim = await swtpm(t)
    const { client, server } = await tpmServer(t, `ek_ca_bundle = ${toml(sim.ekCaBundle)}`)
    const a = await tpmAgent(t, sim.tcti, { ekAlgorithm: c.ek, akAlgorithm: c.ak, keyType: c.key })
    const r = await client.attestAgent(a.attestor, a.key)
    const hash = await ekHash(a.tpm, c.ek)
    assert.equal(r.svid.spiffeId, `spiffe://example.org/spire/agent/tpm/${hash}`)
    assert.equal(r.reattestable, true)
    const sel = r.selectors.filter((s) => s.type === 'tpm').map((s) => s.value)
    assert.ok(sel.includes(`ek_hash:${hash}`), sel.join(' '))
    assert.ok(sel.includes(`ek_ca:${issuingCaHash(sim.ekCaBundle)}`), sel.join(' '))
    assert.ok(sel.includes('manufacturer:id:00001014'), sel.join(' '))
    assert.ok(sel.includes('model:swtpm'), sel.join(' '))
    assert.ok(
      sel.some((s) => s.startsWith('fw:id:')),
      sel.join(' '),
    )
    for (let i = 0; i < 8; i++) {
      assert.ok(
        sel.some((s) => new RegExp(`^pcr:sha256:${i}:[0-9a-f]{64}$`).test(s)),
        sel.join(' '),
      )
    }
    // The SVID certifies the TPM key; the TPM signs the agent's calls.
    const leaf = new NodeX509(r.svid.certChain[0]!)
    assert.deepEqual(
      leaf.publicKey.export({ type: 'spki', format: 'der' }),
      a.key.publicKey.export({ type: 'spki', format: 'der' }),
    )
    const auth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: a.key }
    const sync = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    assert.equal(sync.full, true)
    // A restarted agent (new attestor, same data dir) reuses the AK and keeps its ID.
    const akPub = readFileSync(join(a.dir, 'agent', 'ak.pub'))
    const again = tpmAgentAttestor({
      tpm: a.tpm,
      dataDir: join(a.dir, 'agent'),
      ekAlgorithm: c.ek,
      akAlgorithm: c.ak,
      agentKey: () => a.key,
    })
    const r2 = await client.attestAgent(again, a.key)
    assert.equal(r2.svid.spiffeId, r.svid.spiffeId)
    assert.deepEqual(readFileSync(join(a.dir, 'agent', 'ak.pub')), akPub)
    assert.equal(await a.tpm.loadedTransientCount(), 0, 'no TPM object leaked')
    // A banned TPM stays out, however genuine its evidence.
    await adminCall(
      server.adminSocket,
      'POST',
      `/v1/agents/${encodeURIComponent(r.svid.spiffeId)}/ban`,
    )
    await assert.rejects(
      client.attestAgent(again, a.key),
      (e: unknown) => e instanceof NodeCallError && e.status === 7 && e.reason === 'banned',
    )
  })
}

test('an EK without a certificate is admitted by its allowlisted hash only; persist_ek keeps it', async (t) => {
  const sim = await swtpm(t)
  const a = await tpmAgent(t, sim.tcti)
  const hash = await withTpm(a.tpm, async () => {
    await using ek = await openEk(a.tpm, 'ecc-p256')
    assert.equal(ek.persistent, false, 'swtpm has no P-256 EK: it is recreated from the template')
    return sha256(publicKeySpki(ek.public))
  })
  const attestor = tpmAgentAttestor({
    tpm: a.tpm,
    dataDir: join(a.dir, 'agent'),
    ekAlgorithm: 'ecc-p256',
    persistEk: true,
    agentKey: () => a.key,
  })
  const caOnly = await tpmServer(t, `ek_ca_bundle = ${toml(sim.ekCaBundle)}`)
  await assert.rejects(caOnly.client.attestAgent(attestor, a.key), refused(/\[ek_untrusted\]/))
  const { client } = await tpmServer(
    t,
    `ek_ca_bundle = ${toml(sim.ekCaBundle)}\nek_hashes = [${toml(hash)}]`,
  )
  const r = await client.attestAgent(attestor, a.key)
  assert.equal(r.svid.spiffeId, `spiffe://example.org/spire/agent/tpm/${hash}`)
  assert.ok(!r.selectors.some((s) => s.value.startsWith('ek_ca:')))
  assert.ok((await a.tpm.listHandles(0x81000000)).includes(0x81010002), 'EK persisted')
})

test('an EK certificate from another manufacturer CA is refused with no SVID', async (t) => {
  const sim = await swtpm(t)
  const other = await swtpm(t)
  const logged: { msg: string; fields: Record<string, unknown> }[] = []
  const log: Logger = (_level, msg, fields = {}) => void logged.push({ msg, fields })
  const { client } = await tpmServer(t, `ek_ca_bundle = ${toml(other.ekCaBundle)}`, log)
  const a = await tpmAgent(t, sim.tcti)
  const e = await client.attestAgent(a.attestor, a.key).then(
    () => assert.fail('attested'),
    (err: unknown) => err,
  )
  assert.ok(refused(/\[chain\]/)(e), String(e))
  // The unauthenticated caller gets the stable reason and an incident id, not the detail (which
  // certificate, which CA); the server's log has the detail under the same id.
  const m = /tpm attestation refused \[chain\] \(server incident ([0-9a-f]{12})\)/.exec(
    (e as Error).message,
  )
  assert.ok(m, (e as Error).message)
  assert.doesNotMatch((e as Error).message, /\[chain\]:/)
  const entry = logged.find((l) => l.msg === 'node attestation failed')
  assert.equal(entry?.fields.incident, m[1])
  assert.equal(entry?.fields.code, 'ERR_ATTESTATION_FAILED')
  assert.match(String(entry?.fields.error), /^tpm attestation refused \[chain\]: ./)
})

test('the EK chain may end at a root only when the agent sends the intermediate from NV', async (t) => {
  const sim = await swtpm(t)
  const dir = tempDir(t)
  const [root, issuing] = parsePemCertificates(readFileSync(sim.ekCaBundle, 'utf8'))
  writeFileSync(join(dir, 'root.pem'), new NodeX509(root!).toString())
  const { client } = await tpmServer(t, `ek_ca_bundle = ${toml(join(dir, 'root.pem'))}`)
  const a = await tpmAgent(t, sim.tcti)
  await assert.rejects(client.attestAgent(a.attestor, a.key), refused(/\[chain\]/))
  // Put the issuing CA where the EK profile keeps chains: NV 0x01c00100.
  writeFileSync(join(dir, 'issuing.der'), issuing!)
  const def = await run('tpm2_nvdefine', [
    '-T',
    sim.tcti,
    '-C',
    'o',
    '-s',
    String(issuing!.length),
    '-a',
    'ownerread|ownerwrite|authread|authwrite|no_da',
    '0x1c00100',
  ])
  assert.equal(def.code, 0, def.stderr)
  const wr = await run('tpm2_nvwrite', [
    '-T',
    sim.tcti,
    '-C',
    'o',
    '-i',
    join(dir, 'issuing.der'),
    '0x1c00100',
  ])
  assert.equal(wr.code, 0, wr.stderr)
  const r = await client.attestAgent(a.attestor, a.key)
  assert.ok(r.selectors.some((s) => s.type === 'tpm' && s.value === `ek_ca:${sha256(issuing!)}`))
})

test('an AK from another TPM than the EK cannot activate the credential: no SVID', async (t) => {
  const sim = await swtpm(t)
  const thief = await swtpm(t)
  const { client } = await tpmServer(t, `ek_ca_bundle = ${toml(sim.ekCaBundle)}`)
  const genuine = await tpmAgent(t, sim.tcti)
  const attacker = await tpmAgent(t, thief.tcti)
  // The attacker sends the genuine TPM's EK (certificate and public area) with its own AK.
  const real = JSON.parse(Buffer.from(await genuine.attestor.payload()).toString()) as Record<
    string,
    unknown
  >
  const forged = {
    ...attacker.attestor,
    name: 'tpm',
    payload: async () => {
      const p = JSON.parse(Buffer.from(await attacker.attestor.payload()).toString()) as Record<
        string,
        unknown
      >
      return new Uint8Array(
        Buffer.from(JSON.stringify({ ...p, ek_cert: real.ek_cert, ek_public: real.ek_public })),
      )
    },
    respond: attacker.attestor.respond,
  }
  // Its TPM cannot open a credential made for another EK.
  await assert.rejects(client.attestAgent(forged, attacker.key), { code: 'ERR_TPM' })
  // Guessing the secret instead is refused by the server.
  const cfg = parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle }, '/')
  const ctx = attestContext(attacker.key, memoryState())
  await assert.rejects(
    tpmServerAttestor(cfg).attest(
      await forged.payload(),
      async () =>
        encodeResponse({
          version: 1,
          secret: randomBytes(32),
          quoteMessage: randomBytes(8),
          quoteSignature: randomBytes(8),
          pcrValues: {},
          certifyMessage: randomBytes(8),
          certifySignature: randomBytes(8),
        }),
      ctx,
    ),
    (e: unknown) => e instanceof TpmAttestationError && e.reason === 'activation',
  )
})

/** Direct server-attestor harness: the agent answers through a script that may tamper. */
async function direct(t: TestContext, serverToml: Record<string, unknown> = {}) {
  const sim = await swtpm(t)
  const a = await tpmAgent(t, sim.tcti)
  const attestor = tpmServerAttestor(
    parseTpmServerConfig({ ek_ca_bundle: sim.ekCaBundle, ...serverToml }, '/'),
  )
  const state = memoryState()
  const ctx = (key: Signer = a.key) => attestContext(key, state)
  const attest = async (
    script: (challenge: Uint8Array) => Promise<Uint8Array> = a.attestor.respond,
    key?: Signer,
  ) => attestor.attest(await a.attestor.payload(), script as Challenger, ctx(key))
  return { sim, a, attestor, state, ctx, attest }
}

test('a replayed quote fails on its nonce; an older quote clock fails after a newer one', async (t) => {
  const d = await direct(t)
  let recorded: Uint8Array | undefined
  await d.attest(async (c) => {
    recorded = await d.a.attestor.respond(c)
    return recorded
  })
  assert.ok(recorded)
  const stored = JSON.parse([...d.state.map.values()][0]!) as { clock: string }
  assert.match(stored.clock, /^\d+$/)
  // Fresh activation, but the old quote.
  await assert.rejects(
    d.attest(replayQuote(d.a.attestor.respond, recorded!)),
    rejectsWith('quote', 'nonce'),
  )
  // The whole old response: the credential secret is a new one each time.
  await assert.rejects(
    d.attest(async () => recorded!),
    rejectsWith('activation'),
  )
  // Two challenges out at once: the agent answers the second first (an older clock), the server
  // accepts the newer answer first, then the older one must fail.
  let firstChallenge: Uint8Array | undefined
  let release: (() => void) | undefined
  const gate = new Promise<void>((r) => {
    release = r
  })
  let olderAnswer: Uint8Array | undefined
  const slow = d.attest(async (c) => {
    firstChallenge = c
    await gate
    return olderAnswer!
  })
  while (!firstChallenge) await new Promise((r) => setTimeout(r, 10))
  olderAnswer = await d.a.attestor.respond(firstChallenge)
  await new Promise((r) => setTimeout(r, 50)) // let the TPM clock move on
  await d.attest() // newer clock, accepted and stored
  release!()
  await assert.rejects(slow, rejectsWith('quote', 'clock'))
})

test('tampered PCR values, a quote without the required PCRs and garbage responses are refused', async (t) => {
  const d = await direct(t)
  await assert.rejects(
    d.attest(async (c) => {
      const r = decode(await d.a.attestor.respond(c))
      const pcrs = r.pcr_values as Record<string, Record<string, string>>
      pcrs.sha256!['7'] = 'ab'.repeat(32)
      return encode(r)
    }),
    rejectsWith('quote', 'pcr_digest'),
  )
  await assert.rejects(
    d.attest(async (c) => {
      const ch = decode(c)
      return d.a.attestor.respond(encode({ ...ch, pcrs: 'sha256:0,1' }))
    }),
    rejectsWith('quote', 'pcr_selection'),
  )
  await assert.rejects(
    d.attest(async () => new Uint8Array(Buffer.from('{"version":1,'))),
    rejectsWith('response'),
  )
  // The same exchange untampered passes: the harness itself is sound.
  const ok = await d.attest()
  assert.ok(ok.agentPath.startsWith('/spire/agent/tpm/'))
})

test('PCR policy: a listed value passes, a value outside the policy names the PCR and value', async (t) => {
  const d = await direct(t, { pcr_policy: { 'sha256:7': ['aa'.repeat(32), '00'.repeat(32)] } })
  const ok = await d.attest()
  assert.ok(ok.selectors.some((s) => s.value === `pcr:sha256:7:${'00'.repeat(32)}`))
  const strict = tpmServerAttestor(
    parseTpmServerConfig(
      {
        ek_ca_bundle: d.sim.ekCaBundle,
        pcr_selection: 'sha256:0',
        pcr_policy: { 'sha256:16': ['aa'.repeat(32)] },
      },
      '/',
    ),
  )
  await assert.rejects(
    strict.attest(await d.a.attestor.payload(), d.a.attestor.respond, d.ctx()),
    (e: unknown) =>
      rejectsWith('pcr_policy')(e) && /PCR sha256:16 is 0{64}/.test((e as Error).message),
  )
})

test('a certify of another key, an exportable agent key and a CSR key that is not the TPM key are refused', async (t) => {
  const d = await direct(t)
  const other = await d.a.keys.generateKey('other', 'ec-p256')
  // Certify of a different key than the one presented.
  let calls = 0
  const swapped = tpmAgentAttestor({
    tpm: d.a.tpm,
    dataDir: join(d.a.dir, 'agent'),
    agentKey: () => (calls++ === 0 ? d.a.key : other),
  })
  await assert.rejects(
    d.attestor.attest(await swapped.payload(), swapped.respond, d.ctx()),
    rejectsWith('certify', 'name'),
  )
  // An agent key that may leave the TPM (no fixedTPM/fixedParent).
  const tpl = signingKeyTemplate('ecc-p256')
  const blob = await withTpm(d.a.tpm, async () => {
    await using srk = await openSrk(d.a.tpm)
    return await d.a.tpm.createKey(srk, {
      ...tpl,
      objectAttributes: tpl.objectAttributes & ~TPMA_OBJECT.fixedTPM & ~TPMA_OBJECT.fixedParent,
    })
  })
  const exportable = tpmKey(d.a.tpm, 'exportable', blob)
  const ex = tpmAgentAttestor({
    tpm: d.a.tpm,
    dataDir: join(d.a.dir, 'agent'),
    agentKey: () => exportable,
  })
  await assert.rejects(
    d.attestor.attest(await ex.payload(), ex.respond, d.ctx(exportable)),
    rejectsWith('agent_key'),
  )
  // The CSR's key must be the certified TPM key.
  const soft = await new MemoryKeyManager().generateKey('soft', 'ec-p256')
  await assert.rejects(d.attest(d.a.attestor.respond, soft), rejectsWith('agent_key'))
})

test('corrupted payloads are refused before any challenge', async (t) => {
  const d = await direct(t)
  const never: Challenger = async () => assert.fail('no challenge for a bad payload')
  const good = decode(await d.a.attestor.payload())
  const truncated = Buffer.from(String(good.ak_public), 'base64').subarray(0, 20)
  for (const bad of [
    new Uint8Array(Buffer.from('not json')),
    encode({ ...good, version: 2 }),
    encode({ ...good, extra: 1 }),
    encode({ ...good, ak_public: truncated.toString('base64') }),
    encode({ ...good, ek_public: '!!!' }),
  ]) {
    await assert.rejects(d.attestor.attest(bad, never, d.ctx()), rejectsWith('payload'))
  }
  // A genuine certificate with another EK's public area (here the same TPM's P-384 EK).
  const p384 = await withTpm(d.a.tpm, () => d.a.tpm.readPublic(0x81010016))
  const mismatched = encode({ ...good, ek_public: Buffer.from(p384.raw).toString('base64') })
  await assert.rejects(d.attestor.attest(mismatched, never, d.ctx()), rejectsWith('ek_mismatch'))
})

test('through the server: a CSR for a software key instead of the TPM key gets no SVID', async (t) => {
  const sim = await swtpm(t)
  const { client } = await tpmServer(t, `ek_ca_bundle = ${toml(sim.ekCaBundle)}`)
  const a = await tpmAgent(t, sim.tcti)
  const soft = await new MemoryKeyManager().generateKey('soft', 'ec-p256')
  await assert.rejects(client.attestAgent(a.attestor, soft), refused(/\[agent_key\]/))
})

test('a re-manufactured TPM (new EK) gets a different agent ID; the stale AK is replaced', async (t) => {
  const dir = tempDir(t)
  const cas = join(dir, 'cas')
  mkdirSync(cas)
  const first = await swtpm(t)
  copyFileSync(first.ekCaBundle, join(cas, 'first.pem'))
  const second = await swtpm(t)
  copyFileSync(second.ekCaBundle, join(cas, 'second.pem'))
  const { client } = await tpmServer(t, `ek_ca_dir = ${toml(cas)}`)
  const a1 = await tpmAgent(t, first.tcti, { dataDir: dir })
  const r1 = await client.attestAgent(a1.attestor, a1.key)
  const ak1 = readFileSync(join(dir, 'agent', 'ak.pub'))
  await a1.tpm.close()
  await first.stop()
  // Same agent data dir, new TPM: its key must be new too (the old blob cannot load).
  rmSync(join(dir, 'keys'), { recursive: true, force: true })
  const a2 = await tpmAgent(t, second.tcti, { dataDir: dir })
  const r2 = await client.attestAgent(a2.attestor, a2.key)
  assert.notEqual(r2.svid.spiffeId, r1.svid.spiffeId)
  assert.match(r2.svid.spiffeId, /\/spire\/agent\/tpm\/[0-9a-f]{64}$/)
  assert.notDeepEqual(readFileSync(join(dir, 'agent', 'ak.pub')), ak1)
})

test('an unreadable or empty EK CA configuration stops the server from starting', async (t) => {
  const dir = tempDir(t)
  writeFileSync(join(dir, 'empty.pem'), '')
  for (const tpmToml of [
    `ek_ca_bundle = ${toml(join(dir, 'missing.pem'))}`,
    `ek_ca_bundle = ${toml(join(dir, 'empty.pem'))}`,
    `ek_ca_dir = ${toml(join(dir, 'nope'))}`,
    'pcr_selection = "sha256:0"',
    'ek_hashes = []',
  ]) {
    await assert.rejects(tpmServer(t, tpmToml), { code: 'ERR_CONFIG' }, tpmToml)
  }
})

test('the agent answers one well-formed challenge with a parseable response', async (t) => {
  const d = await direct(t)
  let seen: Uint8Array | undefined
  await d.attest(async (c) => {
    assert.equal(parseChallenge(c).nonce.length, 32)
    seen = await d.a.attestor.respond(c)
    return seen
  })
  const r = parseResponse(seen!)
  assert.equal(Object.keys(r.pcrValues.sha256 ?? {}).length, 8)
})

test('TPM key manager: keys sign verifiably in the TPM, persist as 0600 blobs, and share the TPM safely', async (t) => {
  const sim = await swtpm(t)
  const dir = tempDir(t)
  const tpm = await TpmContext.open(sim.tcti)
  defer(t, () => tpm.close())
  const km = new TpmKeyManager(tpm, join(dir, 'keys'))
  const data = new TextEncoder().encode('to be signed')
  const ec = await km.generateKey('ec', 'ec-p256')
  const rsa = await km.generateKey('rsa', 'rsa-2048')
  // Many signs at once: each is load/sign/flush under the lock, so swtpm never runs out of slots.
  const sigs = await Promise.all([ec, rsa, ec, rsa, ec, ec].map((k) => k.sign(data)))
  for (const [i, k] of [ec, rsa, ec, rsa, ec, ec].entries()) {
    assert.ok(
      nodeVerify('sha256', data, { key: k.publicKey, dsaEncoding: 'ieee-p1363' }, sigs[i]!),
      `${k.keyType} signature ${i}`,
    )
  }
  assert.equal(sigs[0]!.length, 64, 'ECDSA as IEEE-P1363 r||s')
  assert.equal(await tpm.loadedTransientCount(), 0)
  const file = join(dir, 'keys', 'ec.tpmkey')
  assert.equal(statSync(file).mode & 0o777, 0o600)
  const stored = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  assert.deepEqual(Object.keys(stored).sort(), ['key_type', 'private', 'public', 'version'])
  // A new manager over the same directory finds the same keys.
  const again = new TpmKeyManager(tpm, join(dir, 'keys'))
  const ec2 = await again.getKey('ec')
  assert.ok(ec2)
  assert.deepEqual(
    ec2.publicKey.export({ type: 'spki', format: 'der' }),
    ec.publicKey.export({ type: 'spki', format: 'der' }),
  )
  assert.deepEqual(await again.tpmPublic('ec'), ec.tpmPublic)
  assert.deepEqual(
    (await again.listKeys()).map((k) => k.id),
    ['ec', 'rsa'],
  )
  await assert.rejects(km.generateKey('p384', 'ec-p384'), { code: 'ERR_KEY_MANAGER' })
  await km.deleteKey('rsa')
  assert.equal(await km.getKey('rsa'), undefined)
  writeFileSync(join(dir, 'keys', 'bad.tpmkey'), '{')
  await assert.rejects(km.getKey('bad'), { code: 'ERR_KEY_MANAGER' })
  // The blob is bound to this TPM: another TPM cannot load it.
  const other = await swtpm(t)
  const otherTpm = await TpmContext.open(other.tcti)
  defer(t, () => otherTpm.close())
  const foreign = await new TpmKeyManager(otherTpm, join(dir, 'keys')).getKey('ec')
  await assert.rejects(foreign!.sign(data), { code: 'ERR_TPM' })
})

test('as steps (MQTT replicas): the saved round holds no credential secret; another attestor instance resumes it; a wrong secret is still refused', async (t) => {
  const d = await direct(t)
  const begun = await d.attestor.begin!(await d.a.attestor.payload(), d.ctx())
  assert.ok('challenge' in begun)
  const answer = await d.a.attestor.respond(begun.challenge)
  const secret = Buffer.from(parseResponse(answer).secret)
  for (const enc of ['hex', 'base64', 'base64url'] as const)
    assert.ok(
      !begun.state.includes(secret.toString(enc)),
      `the round state holds the secret (${enc})`,
    )
  // Another replica: its own attestor from the same config, only the saved state in common.
  const other = tpmServerAttestor(parseTpmServerConfig({ ek_ca_bundle: d.sim.ekCaBundle }, '/'))
  const wrong = encodeResponse({ ...parseResponse(answer), secret: randomBytes(32) })
  await assert.rejects(other.resume!(begun.state, wrong, d.ctx()), rejectsWith('activation'))
  await assert.rejects(other.resume!('{"v":1}', answer, d.ctx()), rejectsWith('response'))
  const r = await other.resume!(begun.state, answer, d.ctx())
  assert.ok('result' in r)
  assert.match(r.result.agentPath, /^\/spire\/agent\/tpm\/[0-9a-f]{64}$/)
})
