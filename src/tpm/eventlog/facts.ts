/**
 * Boot facts from a replayed event log. Replay proves each event's digest and the order of the
 * digests within one PCR; it proves nothing about an event's type or data (neither is hashed into
 * the PCR). So a fact comes only from (a) an event whose data hashes to its digest (the data is
 * then exactly what was measured), or (b) a digest itself (an image hash in PCR 4, firmware code in
 * PCR 0). Secure boot configuration counts only before the first separator in PCR 7: after it the
 * OS can extend PCR 7 itself. See docs/attestors/tpm-eventlog.md.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { HASH_ALGS } from '../constants.js'
import {
  EFI_CERT_X509,
  EFI_GLOBAL_VARIABLE,
  EFI_IMAGE_SECURITY_DATABASE,
  type EfiSignature,
  parseSignatureLists,
  parseVariableData,
  signature,
} from './efi.js'
import { EventLogError } from './errors.js'
import { EV, type EventLog, eventTypeName, isKnownEventType, type LogEvent } from './types.js'

/** An event named for errors and output: index, PCR and type as the log claims it. */
export function describeEvent(e: LogEvent): string {
  return `event ${e.index} (PCR ${e.pcr}, ${eventTypeName(e.type)})`
}

export interface DigestFact {
  readonly event: number
  /** Hex digest in the replayed bank. */
  readonly digest: string
}

export interface BootFacts {
  /** The replayed bank the digests below are in (sha256, ...). */
  readonly bank: string
  /** From the SecureBoot variable before PCR 7's separator; undefined when not measured there. */
  readonly secureBoot: boolean | undefined
  readonly secureBootEvent: number | undefined
  /** Signature databases before PCR 7's separator (absent when not measured). */
  readonly pk: readonly EfiSignature[] | undefined
  readonly kek: readonly EfiSignature[] | undefined
  readonly db: readonly EfiSignature[] | undefined
  readonly dbx: readonly EfiSignature[] | undefined
  /** sha256 of the whole dbx variable content: one value for "this revocation list". */
  readonly dbxSha256: string | undefined
  /** EV_EFI_VARIABLE_AUTHORITY events in PCR 7 after the separator whose data hashes to the digest. */
  readonly authorities: readonly (EfiSignature & {
    readonly event: number
    readonly variable: string
  })[]
  /** PCR 7 events after the separator that are not proven authorities (e.g. shim's own). */
  readonly unprovenPcr7: readonly DigestFact[]
  /** Proven EV_EFI_VARIABLE_AUTHORITY events of other variables than db (SbatLevel, MokListRT). */
  readonly otherPcr7: readonly (DigestFact & { readonly variable: string })[]
  /** PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION digests (Authenticode hashes), in order. */
  readonly bootApps: readonly DigestFact[]
  /** PCR 4 events that are neither a proven action/separator nor an application. */
  readonly unprovenPcr4: readonly DigestFact[]
  /** PCR 0 events whose digest is not the hash of their data: firmware code (or a relabelled event). */
  readonly firmware: readonly DigestFact[]
  /** The kernel command line (GRUB: PCR 8; systemd-boot: PCR 12), when its digest proves the text. */
  readonly kernelCmdline:
    | { readonly event: number; readonly pcr: number; readonly text: string }
    | undefined
  /** PCRs whose events were read (the replayed ones). */
  readonly pcrs: readonly number[]
}

const FIRMWARE_CODE: ReadonlySet<number> = new Set([
  EV.POST_CODE,
  EV.POST_CODE2,
  EV.S_CRTM_CONTENTS,
  EV.EFI_PLATFORM_FIRMWARE_BLOB,
  EV.EFI_PLATFORM_FIRMWARE_BLOB2,
])

const CMDLINE_PREFIX = 'kernel_cmdline: '

/** True when the event's data hashes (in `hashAlg`) to its digest in that bank. */
export function dataProven(e: LogEvent, hashAlg: number, data: Uint8Array = e.data): boolean {
  const d = e.digests.get(hashAlg)
  const h = HASH_ALGS.get(hashAlg)
  if (d === undefined || h === undefined) return false
  const got = createHash(h.name).update(data).digest()
  return got.length === d.length && timingSafeEqual(got, d)
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

/** GRUB's kernel_cmdline event: the digest covers the text after the prefix (with or without NUL). */
function kernelCmdline(e: LogEvent, hashAlg: number): string | undefined {
  const text = Buffer.from(e.data).toString('latin1')
  if (!text.startsWith(CMDLINE_PREFIX)) return undefined
  const body = e.data.subarray(CMDLINE_PREFIX.length)
  const trimmed = body.length > 0 && body[body.length - 1] === 0 ? body.subarray(0, -1) : body
  for (const candidate of [body, trimmed]) {
    if (dataProven(e, hashAlg, candidate)) return Buffer.from(trimmed).toString('utf8')
  }
  return undefined
}

/**
 * systemd-boot (and the systemd stub) measure the kernel command line into PCR 12 as EV_IPL whose
 * data is the UTF-16LE string itself, NUL-terminated: proven when that data hashes to the digest.
 */
function systemdBootCmdline(e: LogEvent, hashAlg: number): string | undefined {
  const d = e.data
  if (d.length < 2 || d.length % 2 !== 0 || !dataProven(e, hashAlg)) return undefined
  const text = Buffer.from(d).toString('utf16le').replace(/\0+$/, '')
  // Only text: a command line has no control characters (a binary blob is something else).
  if (text.length === 0 || [...text].some((c) => c.charCodeAt(0) < 0x20 && c !== '\t'))
    return undefined
  return text
}

/**
 * Derives the boot facts from `log` for the PCRs in `pcrs` of bank `hashAlg`, which the caller has
 * replayed against a quote (checkReplay). Refuses an unknown event type in those PCRs, a PCR 7
 * configuration event whose data does not hash to its digest, and a variable measured twice.
 */
export function deriveFacts(log: EventLog, hashAlg: number, pcrs: readonly number[]): BootFacts {
  const read = new Set(pcrs)
  const events = log.events.filter((e) => e.type !== EV.NO_ACTION && read.has(e.pcr))
  for (const e of events) {
    if (!isKnownEventType(e.type)) {
      throw new EventLogError(
        'unknown_event',
        `${describeEvent(e)}: unknown event type in a PCR the policy reads`,
        e.index,
      )
    }
  }
  const bank = HASH_ALGS.get(hashAlg)!.name
  const digest = (e: LogEvent) => hex(e.digests.get(hashAlg)!)
  const vars = new Map<string, { event: number; data: Uint8Array }>()
  let separator7 = false
  const authorities: (EfiSignature & { event: number; variable: string })[] = []
  const unprovenPcr7: DigestFact[] = []
  const otherPcr7: (DigestFact & { variable: string })[] = []
  const bootApps: DigestFact[] = []
  const unprovenPcr4: DigestFact[] = []
  const firmware: DigestFact[] = []
  // First proven command line per PCR: order within a PCR is proven, across PCRs it is not.
  const cmdlines = new Map<number, { event: number; pcr: number; text: string }>()

  for (const e of events) {
    if (e.pcr === 7) {
      if (!separator7) {
        if (e.type === EV.SEPARATOR) {
          if (!dataProven(e, hashAlg)) {
            throw new EventLogError(
              'event_data',
              `${describeEvent(e)}: data does not hash to its digest`,
              e.index,
            )
          }
          separator7 = true
          continue
        }
        if (e.type !== EV.EFI_VARIABLE_DRIVER_CONFIG) continue
        // The spec hashes the whole UEFI_VARIABLE_DATA; data that does not is forged.
        if (!dataProven(e, hashAlg)) {
          throw new EventLogError(
            'event_data',
            `${describeEvent(e)}: data does not hash to its digest`,
            e.index,
          )
        }
        const v = parseVariableData(e.data, e.index)
        const known =
          (v.guid === EFI_GLOBAL_VARIABLE && ['SecureBoot', 'PK', 'KEK'].includes(v.name)) ||
          (v.guid === EFI_IMAGE_SECURITY_DATABASE && ['db', 'dbx'].includes(v.name))
        if (!known) continue
        if (vars.has(v.name)) {
          throw new EventLogError(
            'event_data',
            `${describeEvent(e)}: ${v.name} is measured twice`,
            e.index,
          )
        }
        vars.set(v.name, { event: e.index, data: v.data })
      } else if (e.type === EV.EFI_VARIABLE_AUTHORITY && dataProven(e, hashAlg)) {
        const v = parseVariableData(e.data, e.index)
        if (v.guid !== EFI_IMAGE_SECURITY_DATABASE || v.name !== 'db') {
          // Proven, but not a db entry (shim measures SbatLevel, MokListRT this way).
          otherPcr7.push({ event: e.index, digest: digest(e), variable: v.name })
          continue
        }
        if (v.data.length < 17) {
          throw new EventLogError(
            'event_data',
            `${describeEvent(e)}: no EFI_SIGNATURE_DATA`,
            e.index,
          )
        }
        // The signature data's type is not recorded: a DER SEQUENCE is a certificate, else a hash.
        const type = v.data[16] === 0x30 ? EFI_CERT_X509 : 'unknown'
        authorities.push({ ...signature(type, v.data), event: e.index, variable: v.name })
      } else {
        unprovenPcr7.push({ event: e.index, digest: digest(e) })
      }
    }
    if (e.pcr === 4) {
      if (e.type === EV.EFI_BOOT_SERVICES_APPLICATION) {
        bootApps.push({ event: e.index, digest: digest(e) })
      } else if (
        !((e.type === EV.EFI_ACTION || e.type === EV.SEPARATOR) && dataProven(e, hashAlg))
      ) {
        unprovenPcr4.push({ event: e.index, digest: digest(e) })
      }
    }
    // Code measurements have no data to prove; a relabelled event is caught the same way.
    if (e.pcr === 0 && (FIRMWARE_CODE.has(e.type) || !dataProven(e, hashAlg))) {
      firmware.push({ event: e.index, digest: digest(e) })
    }
    if (e.type === EV.IPL && (e.pcr === 8 || e.pcr === 12) && !cmdlines.has(e.pcr)) {
      const text = e.pcr === 8 ? kernelCmdline(e, hashAlg) : systemdBootCmdline(e, hashAlg)
      if (text !== undefined) cmdlines.set(e.pcr, { event: e.index, pcr: e.pcr, text })
    }
  }

  // Without a separator the OS could have extended any "configuration" into PCR 7 after boot.
  const sb = separator7 ? vars.get('SecureBoot') : undefined
  const db = (name: string) => {
    const v = separator7 ? vars.get(name) : undefined
    return v ? parseSignatureLists(v.data, v.event) : undefined
  }
  const dbx = separator7 ? vars.get('dbx') : undefined
  return {
    bank,
    secureBoot: sb ? sb.data.length === 1 && sb.data[0] === 1 : undefined,
    secureBootEvent: sb?.event,
    pk: db('PK'),
    kek: db('KEK'),
    db: db('db'),
    dbx: db('dbx'),
    dbxSha256: dbx ? createHash('sha256').update(dbx.data).digest('hex') : undefined,
    authorities,
    unprovenPcr7,
    otherPcr7,
    bootApps,
    unprovenPcr4,
    firmware,
    // GRUB's wins: on a GRUB boot PCR 12 is empty, so anything there came later.
    kernelCmdline: cmdlines.get(8) ?? cmdlines.get(12),
    pcrs: [...read].sort((a, b) => a - b),
  }
}
