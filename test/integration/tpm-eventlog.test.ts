/**
 * Measured boot end to end on swtpm: a real firmware log's digests are extended into the simulated
 * TPM's PCRs, the agent sends that log with its quote, and the server replays it, derives the boot
 * facts, applies the reference state and matches a node alias on the facts. Then the log is
 * tampered with in the ways an attacker would (changed digest, dropped, reordered, relabelled
 * events) and the quote is narrowed (CVE-2022-0317): each is refused with its reason.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type TestContext, test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { tpmAgentAttestor } from '../../src/attestors/tpm/agent.js'
import {
  encodeChallenge,
  parseChallenge,
  TpmAttestationError,
} from '../../src/attestors/tpm/protocol.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import type { AttestorState, Challenger } from '../../src/attestors/types.js'
import { type Log, silentLog } from '../../src/common/log.js'
import { TpmKeyManager } from '../../src/keymanager/tpm.js'
import { adminCall } from '../../src/server/admin-client.js'
import { parseServerConfig } from '../../src/server/config.js'
import { startServer } from '../../src/server/server.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { TpmContext } from '../../src/tpm/context.js'
import { encodeEventLog } from '../../src/tpm/eventlog/encode.js'
import { deriveFacts } from '../../src/tpm/eventlog/facts.js'
import { parseEventLog } from '../../src/tpm/eventlog/parse.js'
import { EV, type EventLog, type LogEvent } from '../../src/tpm/eventlog/types.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'
import { readEventLogFixture } from '../helpers/eventlogs.js'
import { run } from '../helpers/exec.js'

const SHA256 = 0x000b
const td = TrustDomain.parse('example.org')
const toml = (s: string) => JSON.stringify(s)
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-eventlog-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Extends the swtpm's sha256 PCRs with the log's digests, event by event, with tpm2-tools. */
async function extendFromLog(tcti: string, log: EventLog): Promise<void> {
  for (const e of log.events) {
    if (e.type === EV.NO_ACTION) continue
    const r = await run('tpm2_pcrextend', [
      '-T',
      tcti,
      `${e.pcr}:sha256=${hex(e.digests.get(SHA256)!)}`,
    ])
    assert.equal(r.code, 0, r.stderr)
  }
}

/** One swtpm booted into the "state" of sb_cert_eventlog (secure boot on, shim + grub + kernel). */
async function bootedNode(t: TestContext) {
  const sim = await startSwtpm()
  const dir = tempDir(t)
  const tpm = await TpmContext.open(sim.tcti)
  t.after(async () => {
    await tpm.close()
    await sim.stop()
  })
  const log = parseEventLog(readEventLogFixture('sb_cert_eventlog'))
  await extendFromLog(sim.tcti, log)
  const logFile = join(dir, 'binary_bios_measurements')
  writeFileSync(logFile, readEventLogFixture('sb_cert_eventlog'))
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const key = await keys.generateKey('agent', 'ec-p256')
  const attestor = tpmAgentAttestor({
    tpm,
    dataDir: join(dir, 'agent'),
    agentKey: () => key,
    eventLogPath: logFile,
  })
  const facts = deriveFacts(log, SHA256, [0, 1, 2, 3, 4, 5, 6, 7])
  return { sim, dir, tpm, key, attestor, log, logFile, facts }
}

function memoryState(): AttestorState {
  const map = new Map<string, string>()
  return {
    get: async (p) => map.get(p),
    set: async (p, v) => {
      map.set(p, v)
    },
  }
}

const refused = (reason: string, message: RegExp) => (e: unknown) => {
  assert.ok(e instanceof TpmAttestationError, String(e))
  assert.equal(e.code, 'ERR_ATTESTATION_FAILED')
  assert.equal(e.reason, reason, e.message)
  assert.match(e.message, message)
  return true
}

test('a node whose PCRs hold a real boot log attests; the facts are selectors a node alias matches', async (t) => {
  const n = await bootedNode(t)
  const authority = n.facts.authorities[0]!.sha256
  const ref = join(n.dir, 'reference.toml')
  writeFileSync(
    ref,
    `require_secure_boot = true\n` +
      `bootloader_digests = [${toml(n.facts.bootApps[0]!.digest)}, ${toml(n.facts.bootApps[1]!.digest)}]\n` +
      `kernel_digests = [${toml(n.facts.bootApps[2]!.digest)}]\n` +
      `db_authorities = [${toml(authority)}]\n` +
      `unverified_pcr7_digests = [${toml(n.facts.unprovenPcr7[0]!.digest)}]\n`,
  )
  const config = parseServerConfig(
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nca_ttl = "24h"\n` +
      `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\n` +
      `ek_ca_bundle = ${toml(n.sim.ekCaBundle)}\nreference_state = ${toml(ref)}\n`,
    join(n.dir, 'server.conf'),
  )
  // The refusals' detail is in the server's log (under the incident the agent is told).
  const logged: string[] = []
  const log: Log = (_level, msg, fields = {}) =>
    void logged.push(`${msg} ${JSON.stringify(fields)}`)
  const server = await startServer(config, { log })
  t.after(() => server.close())
  const client = new GrpcNodeClient({
    address: `127.0.0.1:${server.port}`,
    trustDomain: td,
    bundle: 'insecure',
  })
  t.after(() => client.close())
  // A node alias for secure-booted machines whose image was verified by this db certificate.
  await adminCall(server.adminSocket, 'POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/node/secure-boot',
    parent_id: 'spiffe://example.org/spire/server',
    selectors: [
      { type: 'tpm', value: 'secureboot:enabled' },
      { type: 'tpm', value: `boot:authority:${authority}` },
    ],
  })
  await adminCall(server.adminSocket, 'POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/app',
    parent_id: 'spiffe://example.org/node/secure-boot',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  // And one for machines without secure boot, which this node must not get.
  await adminCall(server.adminSocket, 'POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/node/no-secure-boot',
    parent_id: 'spiffe://example.org/spire/server',
    selectors: [{ type: 'tpm', value: 'secureboot:disabled' }],
  })
  await adminCall(server.adminSocket, 'POST', '/v1/entries', {
    spiffe_id: 'spiffe://example.org/legacy-app',
    parent_id: 'spiffe://example.org/node/no-secure-boot',
    selectors: [{ type: 'unix', value: 'uid:1000' }],
  })
  const r = await client.attestAgent(n.attestor, n.key)
  const sel = r.selectors.filter((s) => s.type === 'tpm').map((s) => s.value)
  for (const want of [
    'secureboot:enabled',
    `boot:authority:${authority}`,
    `boot:db_cert:${authority}`,
    `boot:kernel:sha256:${n.facts.bootApps[2]!.digest}`,
  ]) {
    assert.ok(sel.includes(want), `${want} not in ${sel.join(' ')}`)
  }
  const auth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: n.key }
  const sync = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
  // The alias's child only: the alias itself is not sent (SPIRE's rule), nor the other alias's.
  assert.deepEqual(
    sync.entries.map((e) => e.spiffeId),
    ['spiffe://example.org/app'],
  )

  // Over gRPC too, a tampered log is refused with its reason (one digest of PCR 4 changed).
  const tampered = n.log.events.map((e) =>
    e.index === 11
      ? { ...e, digests: new Map([...e.digests].map(([a, d]) => [a, d.map((b) => b ^ 1)])) }
      : e,
  )
  writeFileSync(n.logFile, encodeEventLog({ ...n.log, events: tampered }))
  await assert.rejects(client.attestAgent(n.attestor, n.key), (e: unknown) => {
    assert.match(String((e as Error).message), /\[event_log\] \(server incident /)
    return true
  })
  assert.match(logged.join('\n'), /\[event_log\]: PCR sha256:4: .*\[replay\]/)
  writeFileSync(n.logFile, readEventLogFixture('sb_cert_eventlog'))

  // Drift: the operator's reference state now allows another kernel only. Re-attestation re-reads
  // it and refuses, naming the event.
  writeFileSync(ref, `require_secure_boot = true\nkernel_digests = [${toml('ab'.repeat(32))}]\n`)
  await assert.rejects(client.attestAgent(n.attestor, n.key), (e: unknown) => {
    assert.match(String((e as Error).message), /\[boot_policy\] \(server incident /)
    assert.doesNotMatch(String((e as Error).message), /kernel_digests/)
    return true
  })
  assert.match(logged.join('\n'), /boot_policy.*event 13 \(PCR 4\).*kernel_digests/)
})

/** The server half on its own, so each tampered log is one quick round. */
function direct(n: Awaited<ReturnType<typeof bootedNode>>, extra: Record<string, unknown> = {}) {
  const attestor = tpmServerAttestor(
    parseTpmServerConfig({ ek_ca_bundle: n.sim.ekCaBundle, event_log: true, ...extra }, '/'),
  )
  return async (respond: Challenger = n.attestor.respond) =>
    attestor.attest(await n.attestor.payload(), respond, {
      trustDomain: 'example.org',
      now: new Date(),
      agentPublicKey: n.key.publicKey,
      state: memoryState(),
    })
}

test('tampered, dropped, reordered and relabelled events, and a narrowed quote, are refused with the reason', async (t) => {
  const n = await bootedNode(t)
  const attest = direct(n)
  const ok = await attest()
  assert.ok(ok.selectors.some((s) => s.value === 'secureboot:enabled'))

  const withLog = async (events: (ev: LogEvent[]) => LogEvent[]) => {
    writeFileSync(n.logFile, encodeEventLog({ ...n.log, events: events([...n.log.events]) }))
    return attest()
  }
  const at = (ev: LogEvent[], index: number) => ev.findIndex((e) => e.index === index)

  // A changed digest (the kernel's, event 13) no longer replays PCR 4.
  await assert.rejects(
    withLog((ev) => {
      const i = at(ev, 13)
      const d = new Map(ev[i]!.digests)
      d.set(SHA256, new Uint8Array(32).fill(7))
      ev[i] = { ...ev[i]!, digests: d }
      return ev
    }),
    refused('event_log', /PCR sha256:4: the log's 3 events replay to/),
  )
  // A dropped event (shim's authority, event 12).
  await assert.rejects(
    withLog((ev) => ev.filter((e) => e.index !== 12)),
    refused('event_log', /PCR sha256:7/),
  )
  // Two images of PCR 4 swapped.
  await assert.rejects(
    withLog((ev) => {
      const i = at(ev, 10)
      const j = at(ev, 11)
      ;[ev[i], ev[j]] = [ev[j]!, ev[i]!]
      return ev
    }),
    refused('event_log', /PCR sha256:4/),
  )
  // A changed type: to an unknown type, the digest still replays, but the type is refused...
  await assert.rejects(
    withLog((ev) => {
      const i = at(ev, 8)
      ev[i] = { ...ev[i]!, type: 0x0000abcd }
      return ev
    }),
    refused('event_log', /event 8 \(PCR 7, 0x0000abcd\): unknown event type/),
  )
  // ...and to EV_NO_ACTION, the event is no longer extended, so PCR 7 does not replay.
  await assert.rejects(
    withLog((ev) => {
      const i = at(ev, 8)
      ev[i] = { ...ev[i]!, type: EV.NO_ACTION }
      return ev
    }),
    refused('event_log', /PCR sha256:7/),
  )
  // Relabelling the SecureBoot variable's data (secure boot "on" for a node where it is off would
  // need the data to change): its digest no longer matches, refused.
  await assert.rejects(
    withLog((ev) => {
      const i = at(ev, 2)
      const data = Uint8Array.from(ev[i]!.data)
      data[data.length - 1] = 0
      ev[i] = { ...ev[i]!, data }
      return ev
    }),
    refused('event_log', /event 2 \(PCR 7, EV_EFI_VARIABLE_DRIVER_CONFIG\): data does not hash/),
  )
  writeFileSync(n.logFile, readEventLogFixture('sb_cert_eventlog'))

  // CVE-2022-0317: an agent that quotes fewer PCRs than the log's policy reads.
  await assert.rejects(
    attest(async (challenge) => {
      const c = parseChallenge(challenge)
      return n.attestor.respond(encodeChallenge({ ...c, pcrs: 'sha256:0,1,2,3' }))
    }),
    refused('quote', /does not cover required PCRs sha256:4,5,6,7/),
  )
  // An agent that sends no log when asked.
  await assert.rejects(
    attest(async (challenge) => {
      const c = parseChallenge(challenge)
      const { eventLog: _drop, ...rest } = c
      return n.attestor.respond(encodeChallenge(rest))
    }),
    refused('event_log', /sent none/),
  )
  // Secure boot required by the reference state, on a node (same TPM state) whose policy differs.
  const dir = tempDir(t)
  writeFileSync(join(dir, 'ref.toml'), `firmware_digests = [${toml('cd'.repeat(32))}]\n`)
  const strict = direct(n, { reference_state: join(dir, 'ref.toml') })
  // sb_cert has no PCR 0 code events, so firmware_digests holds; the log still attests.
  await strict()
})

test('a GRUB boot (real Ubuntu log, 105 events): the kernel command line in PCR 8 is proven and checked', async (t) => {
  const sim = await startSwtpm()
  const dir = tempDir(t)
  const tpm = await TpmContext.open(sim.tcti)
  t.after(async () => {
    await tpm.close()
    await sim.stop()
  })
  const name = 'ubuntu_2104_shielded_vm_no_secure_boot_eventlog'
  const log = parseEventLog(readEventLogFixture(name))
  await extendFromLog(sim.tcti, log)
  const logFile = join(dir, 'log')
  writeFileSync(logFile, readEventLogFixture(name))
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const key = await keys.generateKey('agent', 'ec-p256')
  const attestor = tpmAgentAttestor({
    tpm,
    dataDir: join(dir, 'agent'),
    agentKey: () => key,
    eventLogPath: logFile,
  })
  const cmdline = deriveFacts(log, SHA256, [8]).kernelCmdline!.text
  const n = { sim, dir, tpm, key, attestor, log, logFile, facts: deriveFacts(log, SHA256, [0]) }
  writeFileSync(join(dir, 'ref.toml'), `kernel_cmdlines = [${toml(cmdline)}]\n`)
  const r = await direct(n, { reference_state: join(dir, 'ref.toml') })()
  const sel = r.selectors.map((s) => s.value)
  assert.ok(sel.includes(`boot:kernel_cmdline:${cmdline}`), sel.join(' '))
  assert.ok(sel.includes('secureboot:disabled'))
  // Another command line allowed only: refused, naming GRUB's event.
  writeFileSync(join(dir, 'ref2.toml'), 'kernel_cmdlines = ["ro quiet"]\n')
  await assert.rejects(
    direct(n, { reference_state: join(dir, 'ref2.toml') })(),
    refused('boot_policy', /event 96 \(PCR 8\): kernel command line/),
  )
  // Secure boot required: this VM has it off, said with the SecureBoot event.
  writeFileSync(join(dir, 'ref3.toml'), 'require_secure_boot = true\n')
  await assert.rejects(
    direct(n, { reference_state: join(dir, 'ref3.toml') })(),
    refused('boot_policy', /event 3 \(SecureBoot\) says it is off/),
  )
})

test('a TCG 1.2 (SHA-1) log, the largest real one, replays on the sha1 bank over gRPC with allow_sha1', async (t) => {
  const sim = await startSwtpm()
  const dir = tempDir(t)
  const tpm = await TpmContext.open(sim.tcti)
  t.after(async () => {
    await tpm.close()
    await sim.stop()
  })
  const name = 'option_rom_eventlog'
  const log = parseEventLog(readEventLogFixture(name))
  for (const e of log.events) {
    if (e.type === EV.NO_ACTION) continue
    const r = await run('tpm2_pcrextend', [
      '-T',
      sim.tcti,
      `${e.pcr}:sha1=${hex(e.digests.get(0x0004)!)}`,
    ])
    assert.equal(r.code, 0, r.stderr)
  }
  const logFile = join(dir, 'log')
  writeFileSync(logFile, readEventLogFixture(name))
  writeFileSync(join(dir, 'ref.toml'), 'bank = "sha1"\nrequire_secure_boot = true\n')
  const keys = new TpmKeyManager(tpm, join(dir, 'keys'))
  const key = await keys.generateKey('agent', 'ec-p256')
  const attestor = tpmAgentAttestor({
    tpm,
    dataDir: join(dir, 'agent'),
    agentKey: () => key,
    eventLogPath: logFile,
  })
  const config = parseServerConfig(
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nca_ttl = "24h"\n` +
      `attest_rate_per_second = 1000\n[plugins.NodeAttestor.tpm]\n` +
      `ek_ca_bundle = ${toml(sim.ekCaBundle)}\nallow_sha1 = true\n` +
      `reference_state = ${toml(join(dir, 'ref.toml'))}\n`,
    join(dir, 'server.conf'),
  )
  const server = await startServer(config, { log: silentLog })
  t.after(() => server.close())
  const client = new GrpcNodeClient({
    address: `127.0.0.1:${server.port}`,
    trustDomain: td,
    bundle: 'insecure',
  })
  t.after(() => client.close())
  const r = await client.attestAgent(attestor, key)
  const sel = r.selectors.filter((s) => s.type === 'tpm').map((s) => s.value)
  assert.ok(sel.includes('secureboot:enabled'), sel.join(' '))
  assert.ok(
    sel.some((s) => /^boot:app:sha1:[0-9a-f]{40}$/.test(s)),
    sel.join(' '),
  )
  assert.ok(
    sel.some((s) => /^pcr:sha1:7:[0-9a-f]{40}$/.test(s)),
    'the sha1 bank was quoted',
  )
})
