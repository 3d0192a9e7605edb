/**
 * Reference state: what a node may have booted, checked against the facts of its replayed log at
 * every attestation. Allowlists of digests (firmware code in PCR 0, boot applications in PCR 4),
 * db authorities, the kernel command line, and whether secure boot must be on. A refusal names the
 * event that broke it. Parsing takes the TOML table; reading the file is the attestor's business.
 */
import { HASH_ALGS } from '../constants.js'
import { EventLogError } from './errors.js'
import type { BootFacts, DigestFact } from './facts.js'

export interface ReferenceState {
  /** The bank replayed and whose digests the lists hold (default sha256). */
  readonly bank: number
  readonly requireSecureBoot: boolean
  readonly firmwareDigests: ReadonlySet<string> | undefined
  readonly bootloaderDigests: ReadonlySet<string> | undefined
  readonly kernelDigests: ReadonlySet<string> | undefined
  /** sha256 of the DER certificates allowed as EV_EFI_VARIABLE_AUTHORITY (db entries). */
  readonly dbAuthorities: ReadonlySet<string> | undefined
  /** PCR 7 digests after the separator allowed without a provable meaning (shim's own events). */
  readonly unverifiedPcr7Digests: ReadonlySet<string>
  readonly kernelCmdlines: ReadonlySet<string> | undefined
}

const KEYS = [
  'bank',
  'require_secure_boot',
  'firmware_digests',
  'bootloader_digests',
  'kernel_digests',
  'db_authorities',
  'unverified_pcr7_digests',
  'kernel_cmdlines',
] as const

/** PCRs a reference state reads: 0-7 always, 8 and 12 when it checks the kernel command line. */
export function referencePcrs(ref: ReferenceState | undefined): number[] {
  const pcrs = [0, 1, 2, 3, 4, 5, 6, 7]
  // GRUB measures the command line into PCR 8, systemd-boot into PCR 12.
  if (ref?.kernelCmdlines) pcrs.push(8, 12)
  return pcrs
}

/** Validates a reference-state table; every problem is listed (the caller raises ERR_CONFIG). */
export function parseReferenceState(raw: Record<string, unknown>): ReferenceState | string[] {
  const problems: string[] = []
  for (const k of Object.keys(raw)) {
    if (!(KEYS as readonly string[]).includes(k)) problems.push(`${k}: unknown key`)
  }
  let bank = 0x000b
  if (raw.bank !== undefined) {
    const id = [...HASH_ALGS].find(([, h]) => h.name === raw.bank)?.[0]
    if (id === undefined) problems.push('bank: must be sha1, sha256, sha384 or sha512')
    else bank = id
  }
  const size = HASH_ALGS.get(bank)!.size
  const list = (key: string, check: (v: string) => boolean, what: string) => {
    const v = raw[key]
    if (v === undefined) return undefined
    if (!Array.isArray(v)) {
      problems.push(`${key}: must be an array of ${what}`)
      return undefined
    }
    const out = new Set<string>()
    for (const x of v) {
      if (typeof x !== 'string' || !check(x))
        problems.push(`${key}: ${JSON.stringify(x)} is not ${what}`)
      else out.add(what.includes('hex') ? x.toLowerCase() : x)
    }
    return out
  }
  const digestHex = new RegExp(`^[0-9a-fA-F]{${size * 2}}$`)
  const digests = (key: string) =>
    list(key, (x) => digestHex.test(x), `${HASH_ALGS.get(bank)!.name} hex digests`)
  let requireSecureBoot = false
  if (raw.require_secure_boot !== undefined) {
    if (typeof raw.require_secure_boot !== 'boolean')
      problems.push('require_secure_boot: must be a bool')
    else requireSecureBoot = raw.require_secure_boot
  }
  const ref: ReferenceState = {
    bank,
    requireSecureBoot,
    firmwareDigests: digests('firmware_digests'),
    bootloaderDigests: digests('bootloader_digests'),
    kernelDigests: digests('kernel_digests'),
    dbAuthorities: list(
      'db_authorities',
      (x) => /^[0-9a-fA-F]{64}$/.test(x),
      'sha256 hex of certificates',
    ),
    unverifiedPcr7Digests: digests('unverified_pcr7_digests') ?? new Set(),
    kernelCmdlines: list(
      'kernel_cmdlines',
      (x) => x.length <= 4096,
      'command lines of at most 4096 bytes',
    ),
  }
  return problems.length > 0 ? problems : ref
}

function refuse(message: string, event?: number): never {
  throw new EventLogError('policy', message, event)
}

const ev = (f: DigestFact) => `event ${f.event}`

/** Throws EventLogError 'policy', naming the first event that breaks `ref`. */
export function checkReferenceState(ref: ReferenceState, facts: BootFacts): void {
  if (ref.requireSecureBoot && facts.secureBoot !== true) {
    if (facts.secureBootEvent === undefined) {
      refuse(
        'secure boot is required, but no SecureBoot variable is measured before the PCR 7 separator',
      )
    }
    refuse(
      `secure boot is required, but event ${facts.secureBootEvent} (SecureBoot) says it is off`,
      facts.secureBootEvent,
    )
  }
  if (ref.firmwareDigests) {
    for (const f of facts.firmware) {
      if (!ref.firmwareDigests.has(f.digest)) {
        refuse(
          `${ev(f)} (PCR 0) measured firmware ${f.digest}, which firmware_digests does not allow`,
          f.event,
        )
      }
    }
  }
  // The last of two or more images is the kernel, the ones before it boot loaders (shim, GRUB,
  // systemd-boot); a list that is not set leaves its role unchecked.
  if (ref.bootloaderDigests || ref.kernelDigests) {
    const n = facts.bootApps.length
    facts.bootApps.forEach((f, i) => {
      const kernel = n > 1 && i === n - 1
      const allowed = kernel ? ref.kernelDigests : ref.bootloaderDigests
      if (allowed && !allowed.has(f.digest)) {
        const what = kernel ? 'kernel_digests' : 'bootloader_digests'
        refuse(`${ev(f)} (PCR 4) loaded image ${f.digest}, which ${what} does not allow`, f.event)
      }
    })
    // A PCR 4 digest whose data does not prove it may be an image under another label.
    const any = new Set([...(ref.bootloaderDigests ?? []), ...(ref.kernelDigests ?? [])])
    for (const f of facts.unprovenPcr4) {
      if (!any.has(f.digest)) {
        refuse(
          `${ev(f)} (PCR 4) has digest ${f.digest}, which is no allowed image and whose data does not prove it`,
          f.event,
        )
      }
    }
  }
  if (ref.dbAuthorities) {
    for (const a of facts.authorities) {
      if (!ref.dbAuthorities.has(a.sha256)) {
        refuse(
          `event ${a.event} (PCR 7): an image was verified by db entry ${a.sha256}, which db_authorities does not allow`,
          a.event,
        )
      }
    }
    for (const f of facts.unprovenPcr7) {
      if (!ref.unverifiedPcr7Digests.has(f.digest)) {
        refuse(
          `${ev(f)} (PCR 7) has digest ${f.digest} whose data does not prove it and which unverified_pcr7_digests does not allow`,
          f.event,
        )
      }
    }
  }
  if (ref.kernelCmdlines) {
    const c = facts.kernelCmdline
    if (!c) refuse('kernel_cmdlines is set, but no kernel command line is proven in PCR 8 or 12')
    if (!ref.kernelCmdlines.has(c.text)) {
      refuse(
        `event ${c.event} (PCR ${c.pcr}): kernel command line ${JSON.stringify(c.text.slice(0, 200))} is not in kernel_cmdlines`,
        c.event,
      )
    }
  }
}
