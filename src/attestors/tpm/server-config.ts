/**
 * [plugins.NodeAttestor.tpm] parsing for the server half of the TPM node attestor: which EKs are
 * trusted (CA certificates, SPKI hashes), which PCRs are quoted and what values they may hold.
 * Fails closed at startup; the verification flow itself is in server.ts.
 */
import { resolve } from 'node:path'
import { ConfigError, type Table } from '../../common/config.js'
import { HASH_ALGS } from '../../tpm/constants.js'
import { referencePcrs } from '../../tpm/eventlog/reference.js'
import { type PcrSelection, parsePcrSpec } from '../../tpm/structures/pcr.js'
import { type Cert, loadCaCertificates } from './ekcert.js'
import { type EventLogConfig, loadReferenceState } from './eventlog.js'

export const DEFAULT_PCR_SELECTION = 'sha256:0,1,2,3,4,5,6,7'

export interface TpmServerConfig {
  /** Trusted EK CA certificates (roots, or intermediates trusted as anchors). */
  readonly caCertificates: readonly Cert[]
  /** sha256 hex of allowlisted EK SPKI DERs (TPMs without certificates). */
  readonly ekHashes: ReadonlySet<string>
  /** PCRs every quote must cover (the policy's PCRs are always added). */
  readonly pcrSelection: PcrSelection
  /** Allowed values per bank and PCR, lowercase hex. */
  readonly pcrPolicy: ReadonlyMap<number, ReadonlyMap<number, ReadonlySet<string>>>
  readonly requireEkCert: boolean
  /** Accept SHA-1 quote/certify signatures and Names (`allow_sha1`); default false. */
  readonly allowSha1?: boolean
  /** Measured boot (`event_log`, `reference_state`): the log is asked for and must replay. */
  readonly eventLog?: EventLogConfig | undefined
  /**
   * Admit agents whose SVID key is in a PKCS#11 token rather than the TPM (`allow_hsm_agent_key`),
   * bound to the quote by its qualifying data; default false: only AK-certified TPM keys.
   */
  readonly allowHsmAgentKey?: boolean
}

const CONFIG_KEYS = [
  'ek_ca_bundle',
  'ek_ca_dir',
  'ek_hashes',
  'pcr_selection',
  'pcr_policy',
  'require_ek_cert',
  'allow_sha1',
  'allow_hsm_agent_key',
  'event_log',
  'reference_state',
] as const

export const SOURCE = 'plugins.NodeAttestor.tpm'
const HASH_ALGS_SHA256 = 0x000b

/**
 * Validates [plugins.NodeAttestor.tpm]. Paths are relative to baseDir. Fails closed at startup:
 * nothing trusted, an unreadable or empty CA file or directory, or require_ek_cert without CAs
 * are ERR_CONFIG, never an attestor that admits everyone (or no one, silently).
 */
export function parseTpmServerConfig(raw: Table, baseDir: string): TpmServerConfig {
  const problems: string[] = []
  for (const k of Object.keys(raw)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) problems.push(`${k}: unknown key`)
  }
  const path = (key: string): string | undefined => {
    const v = raw[key]
    if (v === undefined) return undefined
    if (typeof v !== 'string' || v === '') {
      problems.push(`${key}: must be a non-empty path`)
      return undefined
    }
    return resolve(baseDir, v)
  }
  const bundle = path('ek_ca_bundle')
  const dir = path('ek_ca_dir')
  const loaded =
    bundle !== undefined || dir !== undefined
      ? loadCaCertificates(bundle, dir)
      : { certs: [], problems: [] }
  problems.push(...loaded.problems)

  const ekHashes = new Set<string>()
  if (raw.ek_hashes !== undefined) {
    if (!Array.isArray(raw.ek_hashes) || raw.ek_hashes.length === 0) {
      problems.push('ek_hashes: must be a non-empty array of sha256 hex strings')
    } else {
      for (const h of raw.ek_hashes) {
        if (typeof h !== 'string' || !/^[0-9a-fA-F]{64}$/.test(h)) {
          problems.push(`ek_hashes: ${JSON.stringify(h)} is not a sha256 hex string`)
        } else ekHashes.add(h.toLowerCase())
      }
    }
  }

  let requireEkCert = ekHashes.size === 0
  if (raw.require_ek_cert !== undefined) {
    if (typeof raw.require_ek_cert !== 'boolean') problems.push('require_ek_cert: must be a bool')
    else requireEkCert = raw.require_ek_cert
  }

  let allowSha1 = false
  if (raw.allow_sha1 !== undefined) {
    if (typeof raw.allow_sha1 !== 'boolean') problems.push('allow_sha1: must be a bool')
    else allowSha1 = raw.allow_sha1
  }

  let allowHsmAgentKey = false
  if (raw.allow_hsm_agent_key !== undefined) {
    if (typeof raw.allow_hsm_agent_key !== 'boolean')
      problems.push('allow_hsm_agent_key: must be a bool')
    else allowHsmAgentKey = raw.allow_hsm_agent_key
  }

  let pcrSelection: PcrSelection = parsePcrSpec(DEFAULT_PCR_SELECTION)
  if (raw.pcr_selection !== undefined) {
    try {
      if (typeof raw.pcr_selection !== 'string') throw new Error('must be a string')
      pcrSelection = parsePcrSpec(raw.pcr_selection)
    } catch (err) {
      problems.push(`pcr_selection: ${(err as Error).message}`)
    }
  }

  const pcrPolicy = new Map<number, Map<number, Set<string>>>()
  if (raw.pcr_policy !== undefined) {
    const t = raw.pcr_policy
    if (typeof t !== 'object' || t === null || Array.isArray(t)) {
      problems.push('pcr_policy: must be a table like { "sha256:7" = ["<hex>", …] }')
    } else {
      for (const [key, values] of Object.entries(t as Table)) {
        const m = /^([a-z0-9]+):(\d{1,2})$/.exec(key)
        let sel: PcrSelection | undefined
        try {
          sel = m ? parsePcrSpec(key) : undefined
        } catch {
          sel = undefined
        }
        const one = sel?.[0]
        if (!one || sel?.length !== 1 || one.pcrs.length !== 1) {
          problems.push(`pcr_policy: key '${key}' is not bank:index (e.g. "sha256:7")`)
          continue
        }
        const size = HASH_ALGS.get(one.hashAlg)!.size
        if (!Array.isArray(values) || values.length === 0) {
          problems.push(`pcr_policy.${key}: must be a non-empty array of hex values`)
          continue
        }
        const allowed = new Set<string>()
        for (const v of values) {
          if (typeof v !== 'string' || !new RegExp(`^[0-9a-fA-F]{${size * 2}}$`).test(v)) {
            problems.push(`pcr_policy.${key}: ${JSON.stringify(v)} is not a ${size}-byte hex value`)
          } else allowed.add(v.toLowerCase())
        }
        const bank = pcrPolicy.get(one.hashAlg) ?? new Map<number, Set<string>>()
        pcrPolicy.set(one.hashAlg, bank)
        bank.set(one.pcrs[0]!, allowed)
      }
    }
  }
  // Measured boot: the reference state (if any) says which bank; the log must replay on every
  // PCR the facts come from, so those PCRs are quoted too (CVE-2022-0317: never trust a PCR the
  // quote left out).
  let eventLog: EventLogConfig | undefined
  const referencePath = path('reference_state')
  let wantLog = referencePath !== undefined
  if (raw.event_log !== undefined) {
    if (typeof raw.event_log !== 'boolean') problems.push('event_log: must be a bool')
    else if (!raw.event_log && referencePath !== undefined) {
      problems.push('event_log = false contradicts reference_state (which needs the log)')
    } else wantLog = raw.event_log
  }
  if (wantLog) {
    let reference: EventLogConfig['reference']
    if (referencePath !== undefined) {
      try {
        reference = loadReferenceState(referencePath, SOURCE)
      } catch (err) {
        problems.push(...((err as ConfigError).problems ?? [(err as Error).message]))
      }
    }
    const bank = reference?.bank ?? HASH_ALGS_SHA256
    // A SHA-1 bank's replay is only as strong as SHA-1: the same opt-in as SHA-1 quotes.
    if (bank === 0x0004 && !allowSha1) {
      problems.push('reference_state: bank = "sha1" needs allow_sha1 = true (prefer sha256)')
    }
    const entry = pcrSelection.find((s) => s.hashAlg === bank)
    const pcrs = [...new Set([...(entry?.pcrs ?? []), ...referencePcrs(reference)])].sort(
      (a, b) => a - b,
    )
    if (entry) entry.pcrs = pcrs
    else pcrSelection.push({ hashAlg: bank, pcrs })
    eventLog = { bank, pcrs, referencePath, reference }
  }

  // A policy on a PCR the quote does not cover would be unenforceable: quote it too.
  for (const [hashAlg, bank] of pcrPolicy) {
    const entry = pcrSelection.find((s) => s.hashAlg === hashAlg)
    const pcrs = [...new Set([...(entry?.pcrs ?? []), ...bank.keys()])].sort((a, b) => a - b)
    if (entry) entry.pcrs = pcrs
    else pcrSelection.push({ hashAlg, pcrs })
  }
  // The log replays on every quoted PCR of its bank (pcr_policy may have added some).
  if (eventLog) {
    const bank = eventLog.bank
    eventLog = { ...eventLog, pcrs: [...pcrSelection.find((e) => e.hashAlg === bank)!.pcrs] }
  }

  if (loaded.certs.length === 0 && ekHashes.size === 0 && problems.length === 0) {
    problems.push('nothing is trusted: set ek_ca_bundle, ek_ca_dir and/or ek_hashes')
  }
  if (requireEkCert && bundle === undefined && dir === undefined) {
    problems.push('require_ek_cert = true needs ek_ca_bundle or ek_ca_dir')
  }
  if (problems.length > 0) throw new ConfigError(SOURCE, problems)
  return {
    caCertificates: loaded.certs,
    ekHashes,
    pcrSelection,
    pcrPolicy,
    requireEkCert,
    allowSha1,
    allowHsmAgentKey,
    eventLog,
  }
}
