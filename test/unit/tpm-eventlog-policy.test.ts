import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type TestContext, test } from 'node:test'
import { gunzipSync, gzipSync } from 'node:zlib'
import {
  DEFAULT_EVENT_LOG_PATH,
  parseTpmAgentConfig,
  readEventLog,
} from '../../src/attestors/tpm/agent.js'
import {
  loadReferenceState,
  referenceStateSource,
  verifyEventLog,
} from '../../src/attestors/tpm/eventlog.js'
import {
  encodeChallenge,
  encodeResponse,
  MAX_EVENT_LOG_COMPRESSED,
  parseChallenge,
  parseResponse,
  TpmAttestationError,
} from '../../src/attestors/tpm/protocol.js'
import { parseTpmServerConfig } from '../../src/attestors/tpm/server-config.js'
import { main } from '../../src/cli/main.js'
import { packageRoot } from '../../src/common/package-root.js'
import { EventLogError } from '../../src/tpm/eventlog/errors.js'
import { deriveFacts } from '../../src/tpm/eventlog/facts.js'
import { parseEventLog } from '../../src/tpm/eventlog/parse.js'
import {
  checkReferenceState,
  parseReferenceState,
  type ReferenceState,
} from '../../src/tpm/eventlog/reference.js'
import { replayBank } from '../../src/tpm/eventlog/replay.js'
import { formatPcrSpec } from '../../src/tpm/structures/pcr.js'
import { eventLogPath, readEventLogFixture } from '../helpers/eventlogs.js'

const SHA256 = 0x000b
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7]

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-eventlog-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function ref(table: Record<string, unknown>): ReferenceState {
  const r = parseReferenceState(table)
  assert.ok(!Array.isArray(r), String(r))
  return r
}

const policyRefusal = (message: RegExp, event?: number) => (e: unknown) => {
  assert.ok(e instanceof EventLogError, String(e))
  assert.equal(e.reason, 'policy')
  assert.match(e.message, message)
  assert.equal(e.eventIndex, event)
  return true
}

const sb = deriveFacts(parseEventLog(readEventLogFixture('sb_cert_eventlog')), SHA256, PCRS)
const ubuntu = deriveFacts(
  parseEventLog(readEventLogFixture('ubuntu_2104_shielded_vm_no_secure_boot_eventlog')),
  SHA256,
  [...PCRS, 8],
)

const agile = deriveFacts(parseEventLog(readEventLogFixture('crypto_agile_eventlog')), SHA256, PCRS)

test('reference state: every problem is listed; digests are checked against the bank size', () => {
  const problems = parseReferenceState({
    bank: 'md5',
    nope: 1,
    kernel_digests: ['abc'],
    require_secure_boot: 'yes',
  })
  assert.ok(Array.isArray(problems))
  assert.equal(problems.length, 4, problems.join('\n'))
  const sha1 = parseReferenceState({ bank: 'sha1', kernel_digests: ['ab'.repeat(32)] })
  assert.ok(Array.isArray(sha1) && /sha1 hex digests/.test(sha1[0]!))
})

test('reference state: each rule refuses naming the event that broke it, and passes the real state', () => {
  assert.throws(
    () => checkReferenceState(ref({ require_secure_boot: true }), ubuntu),
    policyRefusal(/event 3 \(SecureBoot\) says it is off/, 3),
  )
  checkReferenceState(ref({ require_secure_boot: true }), sb)
  const apps = sb.bootApps.map((a) => a.digest)
  assert.throws(
    () => checkReferenceState(ref({ bootloader_digests: [apps[1]] }), sb),
    policyRefusal(/event 10 \(PCR 4\) loaded image .* bootloader_digests/, 10),
  )
  assert.throws(
    () => checkReferenceState(ref({ kernel_digests: [apps[0]] }), sb),
    policyRefusal(/event 13 \(PCR 4\).*kernel_digests/, 13),
  )
  checkReferenceState(
    ref({ bootloader_digests: [apps[0], apps[1]], kernel_digests: [apps[2]] }),
    sb,
  )
  // shim's authority events cannot be proven: refused unless their digest is allowed as such.
  const authority = sb.authorities[0]!.sha256
  assert.throws(
    () => checkReferenceState(ref({ db_authorities: [authority] }), sb),
    policyRefusal(/event 12 \(PCR 7\).*unverified_pcr7_digests/, 12),
  )
  assert.throws(
    () => checkReferenceState(ref({ db_authorities: ['00'.repeat(32)] }), sb),
    policyRefusal(/event 8 \(PCR 7\).*db entry/, 8),
  )
  checkReferenceState(
    ref({ db_authorities: [authority], unverified_pcr7_digests: [sb.unprovenPcr7[0]!.digest] }),
    sb,
  )
  assert.throws(
    () => checkReferenceState(ref({ kernel_cmdlines: ['quiet'] }), ubuntu),
    policyRefusal(/event 96 \(PCR 8\): kernel command line/, 96),
  )
  checkReferenceState(ref({ kernel_cmdlines: [ubuntu.kernelCmdline!.text] }), ubuntu)
  assert.throws(
    () => checkReferenceState(ref({ firmware_digests: ['00'.repeat(32)] }), agile),
    policyRefusal(/event 1 \(PCR 0\) measured firmware/, 1),
  )
  checkReferenceState(ref({ firmware_digests: agile.firmware.map((f) => f.digest) }), agile)
  // Proven PCR 0 events (the S-CRTM version string) need no allowlist entry.
  checkReferenceState(ref({ firmware_digests: ['00'.repeat(32)] }), ubuntu)
})

test('server config: event_log and reference_state extend the quoted PCRs and fail closed', (t) => {
  const dir = tempDir(t)
  const base = { ek_hashes: ['ab'.repeat(32)] }
  const plain = parseTpmServerConfig({ ...base, pcr_selection: 'sha256:7' }, dir)
  assert.equal(plain.eventLog, undefined)
  const withLog = parseTpmServerConfig({ ...base, pcr_selection: 'sha256:7', event_log: true }, dir)
  assert.equal(formatPcrSpec(withLog.pcrSelection), 'sha256:0,1,2,3,4,5,6,7')
  assert.deepEqual(withLog.eventLog?.pcrs, PCRS)
  // A pcr_policy PCR of the log's bank is quoted, so the log must replay on it too.
  const withPolicy = parseTpmServerConfig(
    { ...base, event_log: true, pcr_policy: { 'sha256:9': ['00'.repeat(32)] } },
    dir,
  )
  assert.deepEqual(withPolicy.eventLog?.pcrs, [...PCRS, 9])
  writeFileSync(join(dir, 'ref.toml'), 'bank = "sha384"\nkernel_cmdlines = ["ro quiet"]\n')
  const withRef = parseTpmServerConfig({ ...base, reference_state: 'ref.toml' }, dir)
  assert.equal(
    formatPcrSpec(withRef.pcrSelection),
    'sha256:0,1,2,3,4,5,6,7+sha384:0,1,2,3,4,5,6,7,8,12',
  )
  assert.equal(withRef.eventLog?.bank, 0x000c)
  writeFileSync(join(dir, 'sha1.toml'), 'bank = "sha1"\n')
  assert.throws(
    () => parseTpmServerConfig({ ...base, reference_state: 'sha1.toml' }, dir),
    (e: unknown) => /needs allow_sha1/.test(String(e)),
  )
  const sha1 = parseTpmServerConfig(
    { ...base, reference_state: 'sha1.toml', allow_sha1: true },
    dir,
  )
  assert.equal(formatPcrSpec(sha1.pcrSelection), 'sha256:0,1,2,3,4,5,6,7+sha1:0,1,2,3,4,5,6,7')
  writeFileSync(join(dir, 'bad.toml'), 'require_secure_boot = "yes"\n')
  assert.throws(
    () => parseTpmServerConfig({ ...base, reference_state: 'bad.toml' }, dir),
    (e: unknown) =>
      (e as { code: string }).code === 'ERR_CONFIG' && /require_secure_boot/.test(String(e)),
  )
  assert.throws(() => parseTpmServerConfig({ ...base, reference_state: 'missing.toml' }, dir), {
    code: 'ERR_CONFIG',
  })
  assert.throws(
    () => parseTpmServerConfig({ ...base, reference_state: 'ref.toml', event_log: false }, dir),
    { code: 'ERR_CONFIG' },
  )
})

test('a reference state file is re-read when it changes; one that stops parsing refuses', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'ref.toml')
  writeFileSync(file, 'require_secure_boot = false\n')
  const cfg = parseTpmServerConfig({ ek_hashes: ['ab'.repeat(32)], reference_state: file }, dir)
  const current = referenceStateSource(cfg.eventLog!, 'test')
  assert.equal(current()?.requireSecureBoot, false)
  writeFileSync(file, 'require_secure_boot = true\n')
  utimesSync(file, new Date(), new Date(Date.now() + 5000))
  assert.equal(current()?.requireSecureBoot, true)
  // A change that would need more PCRs quoted than startup arranged is refused, not half-applied.
  writeFileSync(file, 'kernel_cmdlines = ["ro"]\n')
  utimesSync(file, new Date(), new Date(Date.now() + 7000))
  assert.throws(
    current,
    (e: unknown) => e instanceof TpmAttestationError && /PCRs 8,12/.test(e.message),
  )
  writeFileSync(file, 'require_secure_boot = [\n')
  utimesSync(file, new Date(), new Date(Date.now() + 10000))
  assert.throws(current, (e: unknown) => e instanceof TpmAttestationError && e.reason === 'config')
})

test('wire: the challenge asks for the log; the response carries it gzip, capped', () => {
  const c = {
    version: 1,
    credentialBlob: new Uint8Array(4),
    encryptedSecret: new Uint8Array(4),
    nonce: new Uint8Array(32),
    pcrs: 'sha256:0',
  } as const
  assert.equal(parseChallenge(encodeChallenge(c)).eventLog, undefined)
  assert.equal(parseChallenge(encodeChallenge({ ...c, eventLog: true })).eventLog, true)
  const r = {
    version: 1,
    secret: new Uint8Array(32),
    quoteMessage: new Uint8Array(8),
    quoteSignature: new Uint8Array(8),
    pcrValues: {},
    certifyMessage: new Uint8Array(8),
    certifySignature: new Uint8Array(8),
  } as const
  const gz = new Uint8Array(gzipSync(readEventLogFixture('option_rom_eventlog')))
  assert.deepEqual(parseResponse(encodeResponse({ ...r, eventLog: gz })).eventLog, gz)
  assert.throws(
    () =>
      parseResponse(
        encodeResponse({ ...r, eventLog: new Uint8Array(MAX_EVENT_LOG_COMPRESSED + 1) }),
      ),
    (e: unknown) => e instanceof TpmAttestationError && e.reason === 'response',
  )
})

test('the server refuses a gzip bomb, a non-gzip log and a missing log before parsing', () => {
  const cfg = { bank: SHA256, pcrs: PCRS, referencePath: undefined, reference: undefined }
  const refusal = (m: RegExp) => (e: unknown) =>
    e instanceof TpmAttestationError && e.reason === 'event_log' && m.test(e.message)
  const bomb = new Uint8Array(gzipSync(Buffer.alloc(4 << 20)))
  assert.ok(bomb.length < MAX_EVENT_LOG_COMPRESSED)
  assert.throws(() => verifyEventLog(cfg, undefined, bomb, new Map()), refusal(/inflates past/))
  assert.throws(
    () => verifyEventLog(cfg, undefined, new Uint8Array(10), new Map()),
    refusal(/not gzip/),
  )
  assert.throws(() => verifyEventLog(cfg, undefined, undefined, new Map()), refusal(/sent none/))
  // A real log against values it does not replay to: the reason names the PCR.
  const log = parseEventLog(readEventLogFixture('sb_cert_eventlog'))
  const replayed = replayBank(log, SHA256)
  const quoted = new Map([
    [SHA256, new Map(PCRS.map((p) => [p, replayed.get(p) ?? new Uint8Array(32)]))],
  ])
  const gz = new Uint8Array(gzipSync(readEventLogFixture('sb_cert_eventlog')))
  const ok = verifyEventLog(cfg, undefined, gz, quoted)
  assert.ok(ok.selectors.includes('secureboot:enabled'))
  quoted.get(SHA256)!.set(5, new Uint8Array(32))
  assert.throws(
    () => verifyEventLog(cfg, undefined, gz, quoted),
    refusal(/PCR sha256:5.*\[replay\]/),
  )
})

test('the agent reads at most 1 MiB of event log and sends it gzip', async (t) => {
  const dir = tempDir(t)
  const gz = await readEventLog(eventLogPath('ubuntu_2104_shielded_vm_no_secure_boot_eventlog'))
  assert.deepEqual(
    new Uint8Array(gunzipSync(gz)),
    readEventLogFixture('ubuntu_2104_shielded_vm_no_secure_boot_eventlog'),
  )
  writeFileSync(join(dir, 'big'), Buffer.alloc((1 << 20) + 1))
  await assert.rejects(
    readEventLog(join(dir, 'big')),
    (e: unknown) => e instanceof TpmAttestationError && e.reason === 'event_log',
  )
  await assert.rejects(readEventLog(join(dir, 'missing')), /cannot read the event log/)
})

async function cli(argv: string[]) {
  let out = ''
  let err = ''
  const code = await main(argv, { out: (s) => (out += s), err: (s) => (err += s), env: {} })
  return { code, out, err }
}

test('CLI: eventlog show prints events, facts and selectors; replay compares with PCR files', async (t) => {
  const dir = tempDir(t)
  const file = eventLogPath('sb_cert_eventlog')
  const show = await cli(['tpm', 'eventlog', 'show', file, '--json'])
  assert.equal(show.code, 0, show.err)
  const j = JSON.parse(show.out)
  assert.equal(j.format, 'crypto-agile')
  assert.equal(j.events.length, 14)
  assert.ok(j.facts.selectors.includes('tpm:secureboot:enabled'))
  const text = await cli(['tpm', 'eventlog', 'show', file])
  assert.match(text.out, /EV_EFI_VARIABLE_AUTHORITY .* proven/)
  assert.match(text.out, /secure boot: enabled \(event 2\)/)
  // A tpm2_pcrread-style file with the replayed values, then one value off.
  const lines = ['sha256:']
  for (const [i, v] of Object.entries(j.replayed.sha256 as Record<string, string>)) {
    lines.push(`  ${i} : 0x${v.toUpperCase()}`)
  }
  for (const i of [1, 2, 3, 6]) lines.push(`  ${i} : 0x${'00'.repeat(32)}`)
  writeFileSync(join(dir, 'pcrs.yaml'), `${lines.join('\n')}\n`)
  const ok = await cli(['tpm', 'eventlog', 'replay', file, '--pcrs', join(dir, 'pcrs.yaml')])
  assert.equal(ok.code, 0, ok.err)
  assert.match(ok.out, /replays to the given sha256 PCRs 0,1,2,3,4,5,6,7/)
  const values = {
    sha256: {
      ...j.replayed.sha256,
      1: '00'.repeat(32),
      2: '00'.repeat(32),
      3: '00'.repeat(32),
      6: '00'.repeat(32),
      7: '11'.repeat(32),
    },
  }
  writeFileSync(join(dir, 'pcrs.json'), JSON.stringify(values))
  const bad = await cli([
    'tpm',
    'eventlog',
    'replay',
    file,
    '--pcrs',
    join(dir, 'pcrs.json'),
    '--json',
  ])
  assert.equal(bad.code, 1)
  const e = JSON.parse(bad.err).error
  assert.equal(e.code, 'ERR_EVENT_LOG')
  assert.equal(e.reason, 'replay')
  assert.match(e.message, /PCR sha256:7/)
  const usage = await cli(['tpm', 'eventlog', 'show'])
  assert.equal(usage.code, 2)
  // A malformed log is refused cleanly, with its reason.
  writeFileSync(join(dir, 'short'), readEventLogFixture('sb_cert_eventlog').subarray(0, 100))
  const trunc = await cli(['tpm', 'eventlog', 'show', join(dir, 'short'), '--json'])
  assert.equal(trunc.code, 1)
  assert.equal(JSON.parse(trunc.err).error.reason, 'truncated')
})

test('agent config: event_log_path defaults to securityfs and must be a path', () => {
  assert.equal(parseTpmAgentConfig({}).eventLogPath, DEFAULT_EVENT_LOG_PATH)
  assert.equal(DEFAULT_EVENT_LOG_PATH, '/sys/kernel/security/tpm0/binary_bios_measurements')
  assert.equal(
    parseTpmAgentConfig({ event_log_path: '/var/log/boot.bin' }).eventLogPath,
    '/var/log/boot.bin',
  )
  assert.throws(() => parseTpmAgentConfig({ event_log_path: 7 }), { code: 'ERR_CONFIG' })
})

test('the example reference state parses', () => {
  const r = loadReferenceState(
    join(packageRoot(import.meta.url), 'examples', 'local', 'boot-reference.toml'),
    'example',
  )
  assert.equal(r.requireSecureBoot, true)
  assert.equal(r.bank, SHA256)
})
