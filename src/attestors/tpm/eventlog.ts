/**
 * Measured boot for the TPM node attestor, server side: the event log the agent sent with its
 * quote is decompressed (bounded), parsed, replayed against the quoted PCRs, reduced to the facts
 * it proves, checked against the reference state and turned into selectors. Every failure is a
 * TpmAttestationError ('event_log' or 'boot_policy') naming the PCR or event at fault.
 */
import { createHash } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
import { parse as parseToml } from 'smol-toml'
import { ConfigError } from '../../common/config.js'
import { EFI_CERT_SHA256, EFI_CERT_X509 } from '../../tpm/eventlog/efi.js'
import { EventLogError } from '../../tpm/eventlog/errors.js'
import { type BootFacts, deriveFacts } from '../../tpm/eventlog/facts.js'
import { DEFAULT_LIMITS, parseEventLog } from '../../tpm/eventlog/parse.js'
import {
  checkReferenceState,
  parseReferenceState,
  type ReferenceState,
  referencePcrs,
} from '../../tpm/eventlog/reference.js'
import { checkReplay } from '../../tpm/eventlog/replay.js'
import type { PcrValues } from '../../tpm/structures/pcr.js'
import { TpmAttestationError } from './protocol.js'

/** What the server does with event logs (`event_log`, `reference_state`). */
export interface EventLogConfig {
  /** The bank replayed (the reference state's, default sha256). */
  readonly bank: number
  /** PCRs of that bank the log must replay to and whose events are read (at least 0-7). */
  readonly pcrs: readonly number[]
  /** The reference state file, re-read when it changes (fail closed if it stops parsing). */
  readonly referencePath: string | undefined
  readonly reference: ReferenceState | undefined
}

// A selector per entry of a signature database, up to this many per kind (db rarely has 5).
const MAX_DB_SELECTORS = 64
const MAX_CMDLINE_SELECTOR = 1024
const sha256Text = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex')

/** Reads and validates a reference-state TOML file; ERR_CONFIG listing every problem. */
export function loadReferenceState(path: string, source: string): ReferenceState {
  let raw: Record<string, unknown>
  try {
    raw = parseToml(readFileSync(path, 'utf8')) as Record<string, unknown>
  } catch (err) {
    throw new ConfigError(source, [`reference_state: ${path}: ${(err as Error).message}`])
  }
  const ref = parseReferenceState(raw)
  if (Array.isArray(ref))
    throw new ConfigError(
      source,
      ref.map((p) => `reference_state ${path}: ${p}`),
    )
  return ref
}

/**
 * The current reference state: the one parsed at startup until the file changes (mtime or size),
 * then the new one, so an operator's update applies at each node's next (re-)attestation. A file
 * that no longer parses refuses every attestation until it is fixed.
 */
export function referenceStateSource(
  cfg: EventLogConfig,
  source: string,
): () => ReferenceState | undefined {
  if (cfg.referencePath === undefined) return () => undefined
  const path = cfg.referencePath
  let current = cfg.reference
  // Empty: the first attestation re-reads the file, so a change since startup is never missed.
  let stamp = ''
  return () => {
    let now: string
    try {
      const st = statSync(path)
      now = `${st.mtimeMs}:${st.size}`
    } catch (err) {
      throw new TpmAttestationError(
        'config',
        `reference_state ${path} is unreadable`,
        undefined,
        err,
      )
    }
    if (now !== stamp) {
      try {
        const next = loadReferenceState(path, source)
        // The quoted PCRs were fixed at startup from the bank and rules then in the file.
        const missing = referencePcrs(next).filter((p) => !cfg.pcrs.includes(p))
        if (next.bank !== cfg.bank || missing.length > 0) {
          throw new TpmAttestationError(
            'config',
            `reference_state ${path} now needs ${next.bank !== cfg.bank ? 'another bank' : `PCRs ${missing.join(',')}`} in the quote: restart the server to apply it`,
          )
        }
        current = next
        stamp = now
      } catch (err) {
        throw new TpmAttestationError('config', (err as Error).message, undefined, err)
      }
    }
    return current
  }
}

/** Facts as `tpm` selector values (documented in docs/attestors/tpm-eventlog.md). */
export function bootSelectors(f: BootFacts): string[] {
  const out: string[] = []
  if (f.secureBoot !== undefined) out.push(`secureboot:${f.secureBoot ? 'enabled' : 'disabled'}`)
  const db = (kind: string, list: BootFacts['db']) => {
    for (const s of (list ?? []).slice(0, MAX_DB_SELECTORS)) {
      if (s.type === EFI_CERT_X509) out.push(`boot:${kind}_cert:${s.sha256}`)
      else if (s.type === EFI_CERT_SHA256) out.push(`boot:${kind}_hash:${s.sha256}`)
    }
  }
  db('pk', f.pk)
  db('kek', f.kek)
  db('db', f.db)
  if (f.dbxSha256) out.push(`boot:dbx:${f.dbxSha256}`)
  for (const a of f.authorities) out.push(`boot:authority:${a.sha256}`)
  for (const a of f.bootApps) out.push(`boot:app:${f.bank}:${a.digest}`)
  if (f.bootApps.length > 0) out.push(`boot:bootloader:${f.bank}:${f.bootApps[0]!.digest}`)
  if (f.bootApps.length > 1) out.push(`boot:kernel:${f.bank}:${f.bootApps.at(-1)!.digest}`)
  if (f.kernelCmdline) {
    out.push(`boot:kernel_cmdline_sha256:${sha256Text(f.kernelCmdline.text)}`)
    if (f.kernelCmdline.text.length <= MAX_CMDLINE_SELECTOR) {
      out.push(`boot:kernel_cmdline:${f.kernelCmdline.text}`)
    }
  }
  return [...new Set(out)]
}

/**
 * Verifies the agent's (gzip) event log against the verified quote's PCR values. `quoted` must be
 * the values the quote signed; the caller has already required `cfg.pcrs` in the quote.
 */
export function verifyEventLog(
  cfg: EventLogConfig,
  reference: ReferenceState | undefined,
  compressed: Uint8Array | undefined,
  quoted: PcrValues,
): { facts: BootFacts; selectors: string[] } {
  if (compressed === undefined) {
    throw new TpmAttestationError(
      'event_log',
      'the server asked for the event log and the agent sent none',
    )
  }
  let raw: Uint8Array
  try {
    // The cap is on the output: a small gzip bomb stops at maxBytes.
    raw = new Uint8Array(gunzipSync(compressed, { maxOutputLength: DEFAULT_LIMITS.maxBytes }))
  } catch (err) {
    throw new TpmAttestationError(
      'event_log',
      `the event log is not gzip or inflates past ${DEFAULT_LIMITS.maxBytes} bytes`,
      undefined,
      err,
    )
  }
  try {
    const log = parseEventLog(raw)
    checkReplay(log, cfg.bank, cfg.pcrs, quoted)
    const facts = deriveFacts(log, cfg.bank, cfg.pcrs)
    if (reference) checkReferenceState(reference, facts)
    return { facts, selectors: bootSelectors(facts) }
  } catch (err) {
    if (!(err instanceof EventLogError)) throw err
    const reason = err.reason === 'policy' ? 'boot_policy' : 'event_log'
    throw new TpmAttestationError(reason, `${err.message} [${err.reason}]`, undefined, err)
  }
}
