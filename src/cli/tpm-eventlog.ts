/**
 * `tpm eventlog show FILE` and `tpm eventlog replay FILE --pcrs FILE`: the operator's view of a
 * TCG event log through the same pure code the server uses, so what is shown here is what an
 * attestation would derive (facts, selectors) or refuse (and why).
 */
import { readFileSync } from 'node:fs'
import { bootSelectors } from '../attestors/tpm/eventlog.js'
import { UsageError } from '../errors.js'
import { HASH_ALGS } from '../tpm/constants.js'
import { EventLogError } from '../tpm/eventlog/errors.js'
import { type BootFacts, dataProven, deriveFacts } from '../tpm/eventlog/facts.js'
import { parseEventLog, printable } from '../tpm/eventlog/parse.js'
import { checkReplay, replayBank } from '../tpm/eventlog/replay.js'
import { EV, type EventLog, eventTypeName } from '../tpm/eventlog/types.js'
import { bankName, type PcrValues } from '../tpm/structures/pcr.js'
import type { Group, Leaf, OptionValues } from './command.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

function readFile(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path))
  } catch (err) {
    throw new UsageError(`${what} ${path}: ${(err as Error).message}`, `pass a readable ${what}`)
  }
}

function bankOption(values: OptionValues, log: EventLog): number {
  const name = typeof values.bank === 'string' ? values.bank : undefined
  if (name === undefined) {
    for (const b of [0x000b, 0x000c, 0x000d, 0x0004]) if (log.banks.includes(b)) return b
    return log.banks[0]!
  }
  const id = [...HASH_ALGS].find(([, h]) => h.name === name)?.[0]
  if (id === undefined) throw new UsageError(`--bank ${name}: not sha1, sha256, sha384 or sha512`)
  return id
}

function pcrList(values: OptionValues): number[] {
  const v = typeof values.read === 'string' ? values.read : '0,1,2,3,4,5,6,7'
  const out = v.split(',').map((s) => {
    if (!/^\d{1,2}$/.test(s) || Number(s) > 23)
      throw new UsageError(`--read ${v}: not PCR indices 0-23`)
    return Number(s)
  })
  return [...new Set(out)].sort((a, b) => a - b)
}

/**
 * PCR values from a file: the attestor's JSON ({"sha256": {"0": "<hex>"}}) or what
 * `tpm2_pcrread` prints (YAML: a bank line, then `  0 : 0x<hex>` lines).
 */
export function parsePcrsFile(text: string): PcrValues {
  const out = new Map<number, Map<number, Uint8Array>>()
  const bankId = (name: string) => {
    const id = [...HASH_ALGS].find(([, h]) => h.name === name)?.[0]
    if (id === undefined) throw new EventLogError('pcrs_file', `unknown bank '${name}'`)
    return id
  }
  const put = (bank: string, index: string, value: string) => {
    const id = bankId(bank)
    const v = value.replace(/^0x/i, '').toLowerCase()
    if (!/^\d{1,2}$/.test(index) || Number(index) > 23) {
      throw new EventLogError('pcrs_file', `bad PCR index '${index.slice(0, 8)}'`)
    }
    if (!new RegExp(`^[0-9a-f]{${HASH_ALGS.get(id)!.size * 2}}$`).test(v)) {
      throw new EventLogError('pcrs_file', `${bank}:${index} is not a ${bank} hex value`)
    }
    const m = out.get(id) ?? new Map<number, Uint8Array>()
    out.set(id, m)
    m.set(Number(index), new Uint8Array(Buffer.from(v, 'hex')))
  }
  const trimmed = text.trim()
  if (trimmed.startsWith('{')) {
    let obj: unknown
    try {
      obj = JSON.parse(trimmed)
    } catch {
      throw new EventLogError('pcrs_file', 'the PCR file is not JSON')
    }
    for (const [bank, values] of Object.entries(obj as Record<string, unknown>)) {
      if (typeof values !== 'object' || values === null) {
        throw new EventLogError('pcrs_file', `bank ${bank} is not an object`)
      }
      for (const [i, v] of Object.entries(values)) put(bank, i, String(v))
    }
    return out
  }
  let bank: string | undefined
  for (const line of text.split('\n')) {
    const b = /^\s*(sha1|sha256|sha384|sha512)\s*:\s*$/.exec(line)
    if (b) {
      bank = b[1]!
      continue
    }
    const v = /^\s*(\d+)\s*:\s*(0x[0-9a-fA-F]+)\s*$/.exec(line)
    if (v && bank) put(bank, v[1]!, v[2]!)
  }
  if (out.size === 0) throw new EventLogError('pcrs_file', 'no PCR values found')
  return out
}

function factsJson(f: BootFacts) {
  return { ...f, selectors: bootSelectors(f).map((v) => `tpm:${v}`) }
}

function formatFacts(f: BootFacts): string {
  const lines = [`facts (bank ${f.bank}, PCRs ${f.pcrs.join(',')}):`]
  const sb = f.secureBoot === undefined ? 'not proven' : f.secureBoot ? 'enabled' : 'disabled'
  lines.push(
    `  secure boot: ${sb}${f.secureBootEvent !== undefined ? ` (event ${f.secureBootEvent})` : ''}`,
  )
  for (const [k, v] of [
    ['PK', f.pk],
    ['KEK', f.kek],
    ['db', f.db],
    ['dbx', f.dbx],
  ] as const) {
    lines.push(`  ${k}: ${v === undefined ? 'not measured' : `${v.length} entries`}`)
  }
  for (const a of f.authorities) lines.push(`  authority (event ${a.event}): ${a.sha256}`)
  for (const a of f.bootApps) lines.push(`  boot application (event ${a.event}): ${a.digest}`)
  for (const a of f.unprovenPcr7) lines.push(`  PCR 7 unproven (event ${a.event}): ${a.digest}`)
  for (const a of f.unprovenPcr4) lines.push(`  PCR 4 unproven (event ${a.event}): ${a.digest}`)
  if (f.kernelCmdline)
    lines.push(`  kernel command line (event ${f.kernelCmdline.event}): ${f.kernelCmdline.text}`)
  lines.push('selectors:')
  for (const s of bootSelectors(f)) lines.push(`  tpm:${s}`)
  return `${lines.join('\n')}\n`
}

const common = {
  bank: {
    type: 'string',
    valueName: 'BANK',
    description: 'bank to replay (default: sha256 if present)',
  },
  read: {
    type: 'string',
    valueName: 'LIST',
    description: 'PCRs the facts are read from (as the server does)',
    default: '0,1,2,3,4,5,6,7',
  },
  json: { type: 'boolean', description: 'print one JSON object instead of text' },
} as const

const showCommand: Leaf = {
  kind: 'command',
  name: 'show',
  summary: 'list the events of a TCG event log, the replayed PCRs and the facts they prove',
  details:
    'FILE is a binary log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements. "proven" marks\n' +
    'events whose data hashes to their digest; facts come only from those and from image digests.',
  args: ['FILE'],
  options: common,
  async run(values, io) {
    const log = parseEventLog(readFile(String(values.FILE), 'event log'))
    const bank = bankOption(values, log)
    const replayed = replayBank(log, bank)
    let facts: BootFacts | undefined
    let refused: EventLogError | undefined
    try {
      facts = deriveFacts(log, bank, pcrList(values))
    } catch (err) {
      if (!(err instanceof EventLogError)) throw err
      refused = err
    }
    const events = log.events.map((e) => ({
      index: e.index,
      pcr: e.pcr,
      type: eventTypeName(e.type),
      digest: e.type === EV.NO_ACTION ? undefined : hex(e.digests.get(bank) ?? new Uint8Array()),
      proven: e.type !== EV.NO_ACTION && dataProven(e, bank),
      size: e.data.length,
      text: printable(e.data),
    }))
    const pcrs = Object.fromEntries(
      [...replayed].sort((a, b) => a[0] - b[0]).map(([i, v]) => [i, hex(v)]),
    )
    if (values.json) {
      io.out(
        `${JSON.stringify({
          format: log.format,
          banks: log.banks.map(bankName),
          startup_locality: log.startupLocality,
          events,
          replayed: { [bankName(bank)]: pcrs },
          ...(facts ? { facts: factsJson(facts) } : {}),
          ...(refused ? { refused: refused.toJSON() } : {}),
        })}\n`,
      )
    } else {
      const lines = [
        `${log.format} log, banks ${log.banks.map(bankName).join(', ')}, ${events.length} events`,
      ]
      for (const e of events) {
        const d = e.digest ? `${e.digest.slice(0, 16)}…` : '(not extended)'.padEnd(17)
        lines.push(
          `${String(e.index).padStart(4)} PCR ${String(e.pcr).padStart(2)} ${e.type.padEnd(34)} ${d} ${e.proven ? 'proven' : '      '} ${e.text ?? `${e.size} bytes`}`,
        )
      }
      lines.push(`replayed ${bankName(bank)}:`)
      for (const [i, v] of Object.entries(pcrs)) lines.push(`  ${i.padStart(2)}: ${v}`)
      io.out(`${lines.join('\n')}\n${facts ? formatFacts(facts) : ''}`)
      if (refused) io.out(`refused: ${refused.message}\n`)
    }
    return refused ? 1 : 0
  },
}

const replayCommand: Leaf = {
  kind: 'command',
  name: 'replay',
  summary: 'replay a TCG event log and compare with PCR values (tpm2_pcrread output or JSON)',
  details:
    'Exit 0 when every PCR of --read replays to the value in the PCR file; 1 with the first PCR\n' +
    'that differs. Get the values with `tpm2_pcrread sha256:0,1,2,3,4,5,6,7 > pcrs.yaml`, or use\n' +
    'the pcrs.json that `spiffe-edge tpm quote --pcrs sha256:0,1,2,3,4,5,6,7 --out DIR` writes.',
  args: ['FILE'],
  options: {
    pcrs: { type: 'string', valueName: 'FILE', description: 'PCR values to compare with' },
    ...common,
  },
  async run(values, io) {
    const log = parseEventLog(readFile(String(values.FILE), 'event log'))
    if (typeof values.pcrs !== 'string') throw new UsageError('--pcrs is required')
    const quoted = parsePcrsFile(Buffer.from(readFile(values.pcrs, 'PCR file')).toString('utf8'))
    const bank = bankOption(values, log)
    const pcrs = pcrList(values)
    const replayed = checkReplay(log, bank, pcrs, quoted)
    const facts = deriveFacts(log, bank, pcrs)
    const out = Object.fromEntries(
      pcrs.map((i) => [i, hex(replayed.get(i) ?? new Uint8Array(HASH_ALGS.get(bank)!.size))]),
    )
    if (values.json) {
      io.out(
        `${JSON.stringify({ replays: true, bank: bankName(bank), pcrs: out, facts: factsJson(facts) })}\n`,
      )
    } else {
      io.out(
        `the log replays to the given ${bankName(bank)} PCRs ${pcrs.join(',')}\n${formatFacts(facts)}`,
      )
    }
    return 0
  },
}

export const eventlogGroup: Group = {
  kind: 'group',
  name: 'eventlog',
  summary: 'TCG event logs: show events and boot facts, replay against PCR values',
  children: [showCommand, replayCommand],
}
