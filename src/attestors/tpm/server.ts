/**
 * The server half of the TPM node attestor. One challenge round proves, in order: the EK is a
 * genuine TPM's (manufacturer chain or allowlisted hash), the AK lives in that TPM (credential
 * activation), the platform state (a quote over the configured PCRs with our nonce, clock never
 * going backwards), and that the agent SVID key lives in the same TPM (certify by the AK) and is
 * the key of the CSR. Everything fails closed; see README.md in this folder for the protocol.
 */
import { createHash, type KeyObject, randomBytes, timingSafeEqual } from 'node:crypto'
import { resolve } from 'node:path'
import { ConfigError, type Table } from '../../common/config.js'
import type { Log } from '../../common/log.js'
import { isSpiffeEdgeError } from '../../errors.js'
import { HASH_ALGS } from '../../tpm/constants.js'
import { makeCredential } from '../../tpm/credential.js'
import type { ClockInfo } from '../../tpm/structures/attest.js'
import {
  bankName,
  formatPcrSpec,
  type PcrSelection,
  type PcrValues,
  parsePcrSpec,
} from '../../tpm/structures/pcr.js'
import {
  objectName,
  parseTpm2bPublic,
  publicKeyObject,
  publicKeySpki,
  TPMA_OBJECT,
  type TpmPublic,
} from '../../tpm/structures/public.js'
import {
  checkAkAlgorithms,
  checkAkAttributes,
  TpmVerifyError,
  verifyCertify,
  verifyQuote,
} from '../../tpm/verify.js'
import type {
  AttestationContext,
  Challenger,
  NodeAttestationResult,
  Selector,
  ServerNodeAttestor,
} from '../types.js'
import {
  type Cert,
  certSpki,
  loadCaCertificates,
  parseCert,
  tpmDeviceAttributes,
  verifyEkChain,
} from './ekcert.js'
import {
  encodeChallenge,
  parsePayload,
  parseResponse,
  TPM,
  TpmAttestationError,
  type TpmAttestReason,
  type TpmResponse,
} from './protocol.js'

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
}

const CONFIG_KEYS = [
  'ek_ca_bundle',
  'ek_ca_dir',
  'ek_hashes',
  'pcr_selection',
  'pcr_policy',
  'require_ek_cert',
  'allow_sha1',
] as const

const SOURCE = 'plugins.NodeAttestor.tpm'

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
  // A policy on a PCR the quote does not cover would be unenforceable: quote it too.
  for (const [hashAlg, bank] of pcrPolicy) {
    const entry = pcrSelection.find((s) => s.hashAlg === hashAlg)
    const pcrs = [...new Set([...(entry?.pcrs ?? []), ...bank.keys()])].sort((a, b) => a - b)
    if (entry) entry.pcrs = pcrs
    else pcrSelection.push({ hashAlg, pcrs })
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
  }
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

function refuse(reason: TpmAttestReason, message: string, cause?: unknown): never {
  throw new TpmAttestationError(reason, message, undefined, cause)
}

/** Runs a check, turning structure/verify errors into an attestation error for `reason`. */
function step<T>(reason: TpmAttestReason, what: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof TpmAttestationError) throw err
    if (err instanceof TpmVerifyError) {
      throw new TpmAttestationError(reason, `${what}: ${err.message}`, err.reason, err)
    }
    const msg = isSpiffeEdgeError(err) || err instanceof Error ? err.message : String(err)
    throw new TpmAttestationError(reason, `${what}: ${msg}`, undefined, err)
  }
}

const SIGNING_KEY_REQUIRED = ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'sign'] as const

/** The agent SVID key: a TPM-born signing key that can never leave the TPM. */
export function checkAgentKeyAttributes(pub: TpmPublic): void {
  const a = pub.objectAttributes
  for (const bit of SIGNING_KEY_REQUIRED) {
    if (!(a & TPMA_OBJECT[bit])) {
      refuse('agent_key', `the agent key lacks the ${bit} attribute (it could be exported)`)
    }
  }
  if (a & TPMA_OBJECT.decrypt) refuse('agent_key', 'the agent key has the decrypt attribute')
  if (a & TPMA_OBJECT.restricted) refuse('agent_key', 'the agent key is restricted (an AK?)')
}

function sameKey(a: KeyObject, b: KeyObject): boolean {
  const da = a.export({ type: 'spki', format: 'der' })
  const db = b.export({ type: 'spki', format: 'der' })
  return da.length === db.length && timingSafeEqual(da, db)
}

interface StoredClock {
  readonly ak_name: string
  readonly clock: string
  readonly reset_count: number
  readonly restart_count: number
}

/** The last accepted quote clock for this agent, if it was made by the same AK. */
function previousClock(stored: string | undefined, akName: string): ClockInfo | undefined {
  if (stored === undefined) return undefined
  try {
    const s = JSON.parse(stored) as Partial<StoredClock>
    if (s.ak_name !== akName || typeof s.clock !== 'string') return undefined
    return {
      clock: BigInt(s.clock),
      resetCount: Number(s.reset_count),
      restartCount: Number(s.restart_count),
      safe: true,
    }
  } catch {
    return undefined
  }
}

/** PCR values from the wire form ({bank: {index: hex}}); an unknown bank is refused. */
export function wireToPcrValues(wire: TpmResponse['pcrValues']): PcrValues {
  const out = new Map<number, Map<number, Uint8Array>>()
  for (const [bank, values] of Object.entries(wire)) {
    const alg = [...HASH_ALGS].find(([, h]) => h.name === bank)?.[0]
    if (alg === undefined) refuse('response', `unknown PCR bank '${bank}'`)
    const m = new Map<number, Uint8Array>()
    for (const [index, v] of Object.entries(values)) {
      m.set(Number(index), new Uint8Array(Buffer.from(v, 'hex')))
    }
    out.set(alg, m)
  }
  return out
}

/** The TPM node attestor, server half; `log` gets the startup warning for allow_sha1. */
export function tpmServerAttestor(cfg: TpmServerConfig, log?: Log): ServerNodeAttestor {
  if (cfg.allowSha1) {
    log?.(
      'warn',
      'tpm node attestor: allow_sha1 = true accepts SHA-1 quotes, certifications and key Names; SHA-1 collisions are practical, turn it off once every TPM uses SHA-256',
      { plugin: SOURCE, allow_sha1: true },
    )
  }
  return {
    kind: 'NodeAttestor',
    name: TPM,
    async attest(payloadBytes, challenge: Challenger, ctx: AttestationContext) {
      return attest(cfg, payloadBytes, challenge, ctx)
    },
  }
}

async function attest(
  cfg: TpmServerConfig,
  payloadBytes: Uint8Array,
  challenge: Challenger,
  ctx: AttestationContext,
): Promise<NodeAttestationResult> {
  if (cfg.caCertificates.length === 0 && cfg.ekHashes.size === 0) {
    refuse('config', 'no EK CA and no EK hash is configured: refusing every TPM')
  }
  const payload = parsePayload(payloadBytes)
  const ek = step('payload', 'ek_public', () => parseTpm2bPublic(payload.ekPublic))
  const ak = step('payload', 'ak_public', () => parseTpm2bPublic(payload.akPublic))
  const agentKey = step('payload', 'agent_key_public', () =>
    parseTpm2bPublic(payload.agentKeyPublic),
  )
  const ekSpki = step('payload', 'ek_public', () => publicKeySpki(ek))
  const ekHash = sha256Hex(ekSpki)
  const selectors: Selector[] = [{ type: TPM, value: `ek_hash:${ekHash}` }]

  // 1. Is this a genuine TPM's EK? A certificate must name exactly this key.
  let chainError: TpmAttestationError | undefined
  let trusted = false
  let leaf: Cert | undefined
  if (payload.ekCert) {
    try {
      leaf = parseCert(payload.ekCert, 'the EK certificate')
    } catch (err) {
      // Some TPMs ship certificates that are not valid DER: only an EK hash can admit those.
      if (!(err instanceof TpmAttestationError)) throw err
      chainError = err
    }
  }
  if (leaf) {
    const certKey = step('chain', 'EK certificate key', () => certSpki(leaf))
    if (!Buffer.from(certKey).equals(Buffer.from(ekSpki))) {
      refuse('ek_mismatch', 'the EK public area is not the key the EK certificate certifies')
    }
    if (cfg.caCertificates.length > 0) {
      try {
        const chain = verifyEkChain(
          leaf,
          (payload.ekChain ?? []).map((d, i) => parseCert(d, `ek_chain[${i}]`)),
          cfg.caCertificates,
          ctx.now,
        )
        trusted = true
        selectors.push({ type: TPM, value: `ek_ca:${chain.issuer.sha256}` })
        // Device attributes only from a certificate we verified.
        const attrs = tpmDeviceAttributes(leaf.info)
        if (attrs.manufacturer)
          selectors.push({ type: TPM, value: `manufacturer:${attrs.manufacturer}` })
        if (attrs.model) selectors.push({ type: TPM, value: `model:${attrs.model}` })
        if (attrs.version) selectors.push({ type: TPM, value: `fw:${attrs.version}` })
      } catch (err) {
        if (!(err instanceof TpmAttestationError)) throw err
        chainError = err
      }
    }
  } else if (!payload.ekCert && cfg.requireEkCert) {
    refuse('ek_untrusted', 'the agent sent no EK certificate and require_ek_cert is on')
  }
  // The hash allowlist stands in for a certificate only when certificates are not required.
  if (!trusted && !cfg.requireEkCert && cfg.ekHashes.has(ekHash)) trusted = true
  if (!trusted) {
    if (chainError) throw chainError
    refuse('ek_untrusted', `EK ${ekHash} has no trusted certificate and is not in ek_hashes`)
  }

  // 2. Checks on what the agent presented, before any work is done for it.
  const policy = { allowSha1: cfg.allowSha1 === true }
  step('ak_attributes', 'AK', () => checkAkAttributes(ak))
  // Before any work is done for this AK: its size, curve, scheme and hashes.
  step('ak_attributes', 'AK', () => checkAkAlgorithms(ak, policy))
  checkAgentKeyAttributes(agentKey)
  const agentKeyObject = step('agent_key', 'agent_key_public', () => publicKeyObject(agentKey))
  if (!sameKey(agentKeyObject, ctx.agentPublicKey)) {
    refuse('agent_key', 'the CSR key is not the TPM agent key the AK certifies')
  }

  // 3. One challenge: a credential only this EK's TPM can open for this AK, and a nonce.
  const secret = new Uint8Array(randomBytes(32))
  const nonce = new Uint8Array(randomBytes(32))
  const akName = objectName(ak)
  const cred = step('payload', 'MakeCredential to the EK', () => makeCredential(ek, akName, secret))
  const responseBytes = await challenge(
    encodeChallenge({
      version: 1,
      credentialBlob: cred.credentialBlob,
      encryptedSecret: cred.encryptedSecret,
      nonce,
      pcrs: formatPcrSpec(cfg.pcrSelection),
    }),
  )
  const res = parseResponse(responseBytes)
  if (res.secret.length !== secret.length || !timingSafeEqual(res.secret, secret)) {
    refuse('activation', 'the credential secret is wrong: the AK is not in the TPM of this EK')
  }

  // 4. The quote: our nonce, our PCRs, a clock that only moves forward.
  const agentPath = `/spire/agent/${TPM}/${ekHash}`
  const prev = previousClock(await ctx.state.get(agentPath), hex(akName))
  const quote = step('quote', 'quote', () =>
    verifyQuote({
      akPublic: ak,
      message: res.quoteMessage,
      signature: res.quoteSignature,
      nonce,
      pcrValues: wireToPcrValues(res.pcrValues),
      requiredPcrs: cfg.pcrSelection,
      previousClock: prev,
      policy,
    }),
  )
  const quoted = quote.pcrs ?? new Map<number, ReadonlyMap<number, Uint8Array>>()
  for (const [hashAlg, bank] of cfg.pcrPolicy) {
    for (const [index, allowed] of bank) {
      const v = quoted.get(hashAlg)?.get(index)
      const value = v ? hex(v) : '(not quoted)'
      if (!v || !allowed.has(value)) {
        refuse(
          'pcr_policy',
          `PCR ${bankName(hashAlg)}:${index} is ${value}, which pcr_policy does not allow`,
        )
      }
    }
  }

  // 5. The agent key lives in the same TPM as the AK, bound to this exchange by the nonce.
  step('certify', 'certify', () =>
    verifyCertify({
      akPublic: ak,
      message: res.certifyMessage,
      signature: res.certifySignature,
      nonce,
      certifiedPublic: agentKey,
      policy,
    }),
  )

  const c = quote.attest.clockInfo
  const stored: StoredClock = {
    ak_name: hex(akName),
    clock: c.clock.toString(),
    reset_count: c.resetCount,
    restart_count: c.restartCount,
  }
  await ctx.state.set(agentPath, JSON.stringify(stored))
  for (const [hashAlg, bank] of quoted) {
    for (const [index, v] of [...bank].sort((a, b) => a[0] - b[0])) {
      selectors.push({ type: TPM, value: `pcr:${bankName(hashAlg)}:${index}:${hex(v)}` })
    }
  }
  return { agentPath, selectors, canReattest: true }
}
