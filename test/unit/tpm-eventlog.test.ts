import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { bootSelectors } from '../../src/attestors/tpm/eventlog.js'
import { encodeEventLog } from '../../src/tpm/eventlog/encode.js'
import { EventLogError } from '../../src/tpm/eventlog/errors.js'
import { deriveFacts } from '../../src/tpm/eventlog/facts.js'
import { DEFAULT_LIMITS, parseEventLog } from '../../src/tpm/eventlog/parse.js'
import { checkReplay, replayBank } from '../../src/tpm/eventlog/replay.js'
import { EV, type EventLog, type LogEvent } from '../../src/tpm/eventlog/types.js'
import { EVENT_LOGS, readEventLogFixture } from '../helpers/eventlogs.js'

const SHA1 = 0x0004
const SHA256 = 0x000b
const PCRS_0_7 = [0, 1, 2, 3, 4, 5, 6, 7]
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

const refusedWith = (reason: string, message?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof EventLogError, String(e))
  assert.equal(e.code, 'ERR_EVENT_LOG')
  assert.equal(e.reason, reason, e.message)
  if (message) assert.match(e.message, message)
  return true
}

/** A PCR extend written out independently of replay.ts (the spec's H(old || digest)). */
function extendAll(events: readonly LogEvent[], alg: number, name: string, size: number) {
  const pcrs = new Map<number, Buffer>()
  for (const e of events) {
    if (e.type === EV.NO_ACTION) continue
    const old = pcrs.get(e.pcr) ?? Buffer.alloc(size)
    pcrs.set(
      e.pcr,
      createHash(name)
        .update(Buffer.concat([old, e.digests.get(alg)!]))
        .digest(),
    )
  }
  return pcrs
}

const SIZES: Record<number, number> = { [SHA1]: 20, [SHA256]: 32, 12: 48 }
const asQuoted = (bank: number, m: ReadonlyMap<number, Uint8Array>, pcrs = PCRS_0_7) =>
  new Map([[bank, new Map(pcrs.map((p) => [p, m.get(p) ?? new Uint8Array(SIZES[bank]!)]))]])

test('every real log parses, replays on each of its banks, and round-trips through the writer', () => {
  const seen: Record<string, string> = {}
  for (const name of EVENT_LOGS) {
    const log = parseEventLog(readEventLogFixture(name))
    seen[name] = `${log.format}:${log.banks.join(',')}:${log.events.length}`
    for (const bank of log.banks) {
      const replayed = replayBank(log, bank)
      if (log.startupLocality === 0) {
        const size = bank === SHA1 ? 20 : bank === SHA256 ? 32 : 48
        const name2 = bank === SHA1 ? 'sha1' : bank === SHA256 ? 'sha256' : 'sha384'
        const mine = extendAll(log.events, bank, name2, size)
        assert.deepEqual(
          [...replayed].map(([p, v]) => [p, hex(v)]).sort(),
          [...mine].map(([p, v]) => [p, v.toString('hex')]).sort(),
          name,
        )
      }
      // The log replays to what it predicts; one flipped bit in a PCR value does not.
      checkReplay(log, bank, PCRS_0_7, asQuoted(bank, replayed))
      const bad = asQuoted(bank, replayed)
      const v0 = Uint8Array.from(bad.get(bank)!.get(0)!)
      v0[0]! ^= 1
      bad.get(bank)!.set(0, v0)
      assert.throws(() => checkReplay(log, bank, PCRS_0_7, bad), refusedWith('replay', /PCR \w+:0/))
    }
    const again = parseEventLog(encodeEventLog(log))
    assert.equal(again.events.length, log.events.length, name)
    assert.deepEqual(
      again.events.map((e) => [e.pcr, e.type, hex(e.data)]),
      log.events.map((e) => [e.pcr, e.type, hex(e.data)]),
    )
  }
  assert.deepEqual(seen, {
    coreos_36_shielded_vm_no_secure_boot_eventlog: 'crypto-agile:4,11,12:75',
    crypto_agile_eventlog: 'crypto-agile:11:26',
    ebs_event_missing_eventlog: 'sha1:4:38',
    option_rom_eventlog: 'sha1:4:61',
    sb_cert_eventlog: 'crypto-agile:4,11,12:14',
    short_no_action_eventlog: 'sha1:4:1',
    ubuntu_2104_shielded_vm_no_secure_boot_eventlog: 'crypto-agile:4,11,12:105',
  })
})

test('the short StartupLocality log sets PCR 0 to locality 3 and extends nothing', () => {
  const log = parseEventLog(readEventLogFixture('short_no_action_eventlog'))
  assert.equal(log.startupLocality, 3)
  const pcr0 = replayBank(log, SHA1).get(0)!
  assert.equal(hex(pcr0), `${'00'.repeat(19)}03`)
  // A truncated copy of it is refused cleanly.
  const bytes = readEventLogFixture('short_no_action_eventlog')
  for (let n = 1; n < bytes.length; n++) {
    assert.throws(() => parseEventLog(bytes.subarray(0, n)), refusedWith('truncated'))
  }
})

test('facts: secure boot, db certificates, the verifying authority, PCR 4 images, the GRUB command line', () => {
  const sb = parseEventLog(readEventLogFixture('sb_cert_eventlog'))
  const f = deriveFacts(sb, SHA256, PCRS_0_7)
  assert.equal(f.secureBoot, true)
  assert.equal(f.db?.length, 4)
  assert.equal(f.authorities.length, 1)
  // The authority that verified the first image is one of db's certificates.
  assert.ok(f.db?.some((d) => d.sha256 === f.authorities[0]!.sha256))
  assert.deepEqual(
    f.bootApps.map((a) => a.event),
    [10, 11, 13],
  )
  // shim's own authority events do not hash to their digests: listed, never believed.
  assert.deepEqual(
    f.unprovenPcr7.map((a) => a.event),
    [12, 14],
  )
  const sel = bootSelectors(f)
  assert.ok(sel.includes('secureboot:enabled'))
  assert.ok(sel.includes(`boot:authority:${f.authorities[0]!.sha256}`))
  assert.ok(sel.includes(`boot:db_cert:${f.authorities[0]!.sha256}`))
  assert.ok(sel.includes(`boot:kernel:sha256:${f.bootApps[2]!.digest}`))
  assert.ok(sel.includes(`boot:bootloader:sha256:${f.bootApps[0]!.digest}`))

  const ubuntu = parseEventLog(
    readEventLogFixture('ubuntu_2104_shielded_vm_no_secure_boot_eventlog'),
  )
  const u = deriveFacts(ubuntu, SHA256, [...PCRS_0_7, 8])
  assert.equal(u.secureBoot, false)
  assert.match(u.kernelCmdline?.text ?? '', /^\/boot\/vmlinuz-5\.11\.0-1006-gcp root=PARTUUID=/)
  assert.ok(bootSelectors(u).includes(`boot:kernel_cmdline:${u.kernelCmdline!.text}`))
  // PCR 8 not read: no command line fact (it would not be quoted, so not proven).
  assert.equal(deriveFacts(ubuntu, SHA256, PCRS_0_7).kernelCmdline, undefined)
  assert.ok(bootSelectors(u).includes('secureboot:disabled'))

  // systemd-boot: the UTF-16LE command line in PCR 12, its own digest.
  const cmd = new Uint8Array(Buffer.from('root=/dev/sda2 ro quiet\0', 'utf16le'))
  const sdboot: LogEvent = {
    index: 500,
    pcr: 12,
    type: EV.IPL,
    data: cmd,
    digests: new Map([[SHA256, new Uint8Array(createHash('sha256').update(cmd).digest())]]),
  }
  const agile = parseEventLog(readEventLogFixture('crypto_agile_eventlog'))
  const withSd = { ...agile, events: [...agile.events, sdboot] }
  assert.equal(
    deriveFacts(withSd, SHA256, [...PCRS_0_7, 12]).kernelCmdline?.text,
    'root=/dev/sda2 ro quiet',
  )
  // The same text under a digest it does not hash to proves nothing.
  const forgedSd = { ...sdboot, digests: new Map([[SHA256, new Uint8Array(32)]]) }
  const withForged = { ...agile, events: [...agile.events, forgedSd] }
  assert.equal(deriveFacts(withForged, SHA256, [...PCRS_0_7, 12]).kernelCmdline, undefined)

  // The SHA-1 bank proves the same facts on a SHA-1-only log.
  const rom = deriveFacts(parseEventLog(readEventLogFixture('option_rom_eventlog')), SHA1, PCRS_0_7)
  assert.equal(rom.bank, 'sha1')
  assert.equal(rom.secureBoot, true)
})

function edit(log: EventLog, fn: (events: LogEvent[]) => LogEvent[]): EventLog {
  return { ...log, events: fn([...log.events]) }
}

test("an event's type and data are not trusted beyond its digest", () => {
  const log = parseEventLog(readEventLogFixture('sb_cert_eventlog'))
  const sbIndex = log.events.findIndex((e) => e.index === 2)
  // Flip SecureBoot's data byte, keeping the digest: the data no longer proves itself.
  const forged = edit(log, (ev) => {
    const e = ev[sbIndex]!
    const data = Uint8Array.from(e.data)
    data[data.length - 1] = 0
    ev[sbIndex] = { ...e, data }
    return ev
  })
  assert.throws(() => deriveFacts(forged, SHA256, PCRS_0_7), refusedWith('event_data', /event 2/))
  // An unknown type in a PCR that is read is refused; outside those PCRs it is not looked at.
  const relabelled = edit(log, (ev) => {
    ev[sbIndex] = { ...ev[sbIndex]!, type: 0x1234 }
    return ev
  })
  assert.throws(
    () => deriveFacts(relabelled, SHA256, PCRS_0_7),
    refusedWith('unknown_event', /event 2 \(PCR 7, 0x00001234\)/),
  )
  deriveFacts(relabelled, SHA256, [0, 4])
  // The OS can extend PCR 7 after boot: a "SecureBoot = 1" after the separator proves nothing.
  const off = parseEventLog(readEventLogFixture('ubuntu_2104_shielded_vm_no_secure_boot_eventlog'))
  const sbOff = off.events.find((e) => e.pcr === 7 && e.type === EV.EFI_VARIABLE_DRIVER_CONFIG)!
  const data = Uint8Array.from(sbOff.data)
  data[data.length - 1] = 1
  const fake: LogEvent = {
    index: 999,
    pcr: 7,
    type: EV.EFI_VARIABLE_DRIVER_CONFIG,
    data,
    digests: new Map(
      [...sbOff.digests].map(([a]) => [
        a,
        new Uint8Array(
          createHash(a === SHA1 ? 'sha1' : a === SHA256 ? 'sha256' : 'sha384')
            .update(data)
            .digest(),
        ),
      ]),
    ),
  }
  const appended = deriveFacts(
    edit(off, (ev) => [...ev, fake]),
    SHA256,
    PCRS_0_7,
  )
  assert.equal(appended.secureBoot, false)
  // Measured twice before the separator is refused.
  const twice = edit(off, (ev) => {
    const i = ev.indexOf(sbOff)
    return [...ev.slice(0, i + 1), { ...sbOff, index: 998 }, ...ev.slice(i + 1)]
  })
  assert.throws(
    () => deriveFacts(twice, SHA256, PCRS_0_7),
    refusedWith('event_data', /measured twice/),
  )
})

test('bounds: size, event count and event data caps; header and digest faults', () => {
  const bytes = readEventLogFixture('ubuntu_2104_shielded_vm_no_secure_boot_eventlog')
  assert.throws(
    () => parseEventLog(bytes, { ...DEFAULT_LIMITS, maxBytes: 1000 }),
    refusedWith('too_large'),
  )
  assert.throws(
    () => parseEventLog(bytes, { ...DEFAULT_LIMITS, maxEvents: 10 }),
    refusedWith('too_many_events'),
  )
  assert.throws(
    () => parseEventLog(bytes, { ...DEFAULT_LIMITS, maxEventData: 1000 }),
    refusedWith('event_too_large'),
  )
  assert.throws(() => parseEventLog(new Uint8Array(0)), refusedWith('truncated'))
  // A declared event size of 4 GiB is refused by the cap, not allocated or read.
  const huge = Uint8Array.from(bytes)
  const view = new DataView(huge.buffer)
  const specSize = view.getUint32(28, true)
  const first = 32 + specSize
  // Event 1: pcr, type, count=3, then sha1(2+20) sha256(2+32) sha384(2+48), then the size.
  view.setUint32(first + 12 + 22 + 34 + 50, 0xffffffff, true)
  assert.throws(() => parseEventLog(huge), refusedWith('event_too_large'))
  // A digest count larger than the header's banks.
  const count = Uint8Array.from(bytes)
  new DataView(count.buffer).setUint32(first + 8, 9, true)
  assert.throws(() => parseEventLog(count), refusedWith('digest'))
  // Spec ID with no algorithms.
  const noAlg = Uint8Array.from(bytes)
  new DataView(noAlg.buffer).setUint32(32 + 24, 0, true)
  assert.throws(() => parseEventLog(noAlg), refusedWith('header'))
  // A bank the log lacks cannot be replayed.
  const agile = parseEventLog(readEventLogFixture('crypto_agile_eventlog'))
  assert.throws(() => replayBank(agile, SHA1), refusedWith('bank_missing'))
})

test('bounded fuzz: mutated and truncated real logs never escape as anything but EventLogError', () => {
  const seeds = EVENT_LOGS.map(readEventLogFixture)
  const deadline = Date.now() + 2000
  let runs = 0
  let worst = 0
  let rng = 0x9e3779b9
  const next = () => {
    rng ^= rng << 13
    rng ^= rng >>> 17
    rng ^= rng << 5
    return rng >>> 0
  }
  while (Date.now() < deadline) {
    runs++
    const seed = seeds[runs % seeds.length]!
    let input: Uint8Array
    if (runs % 3 === 0) input = seed.subarray(0, next() % (seed.length + 1))
    else {
      input = Uint8Array.from(seed)
      const n = 1 + (next() % 8)
      for (let i = 0; i < n; i++) {
        // Bias mutations to the first 200 bytes (the header) half the time.
        const at = next() % (i % 2 === 0 ? Math.min(200, input.length) : input.length)
        input[at] = next() & 0xff
      }
    }
    const t0 = process.hrtime.bigint()
    try {
      const log = parseEventLog(input)
      for (const bank of log.banks) {
        try {
          replayBank(log, bank)
          deriveFacts(log, bank, PCRS_0_7)
        } catch (err) {
          if (!(err instanceof EventLogError)) throw err
        }
      }
    } catch (err) {
      if (!(err instanceof EventLogError)) {
        throw new Error(`run ${runs}: escaped as ${(err as Error).stack ?? String(err)}`)
      }
    }
    worst = Math.max(worst, Number(process.hrtime.bigint() - t0) / 1e6)
  }
  assert.ok(runs > 200, `fuzzed ${runs} inputs`)
  // The largest log is ~72 KiB: one pass is well under a second even on a loaded machine.
  assert.ok(worst < 1000, `slowest input took ${worst} ms`)
})
