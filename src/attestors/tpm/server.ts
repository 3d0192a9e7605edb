/**
 * The server half of the TPM node attestor. One challenge round proves, in order: the EK is a
 * genuine TPM's (manufacturer chain or allowlisted hash), the AK lives in that TPM (credential
 * activation), the platform state (a quote over the configured PCRs with our nonce, clock never
 * going backwards), and that the agent SVID key lives in the same TPM (certify by the AK) and is
 * the key of the CSR. Everything fails closed; see README.md in this folder for the protocol.
 */
import {
  createHash,
  createPublicKey,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto'
import type { Log } from '../../common/log.js'
import { isSpiffeEdgeError } from '../../errors.js'
import { keyTypeOf } from '../../keymanager/types.js'
import { HASH_ALGS } from '../../tpm/constants.js'
import { makeCredential } from '../../tpm/credential.js'
import type { ReferenceState } from '../../tpm/eventlog/reference.js'
import type { ClockInfo } from '../../tpm/structures/attest.js'
import { bankName, formatPcrSpec, type PcrValues } from '../../tpm/structures/pcr.js'
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
import { EkChainCache } from './ek-chain-cache.js'
import { referenceStateSource, verifyEventLog } from './eventlog.js'
import {
  agentKeyBinding,
  encodeChallenge,
  hsmKeyQualifyingData,
  parsePayload,
  parseResponse,
  TPM,
  TpmAttestationError,
  type TpmAttestReason,
  type TpmResponse,
} from './protocol.js'
import { fromHex, parseRound, type RoundState } from './round-state.js'
import { SOURCE, type TpmServerConfig } from './server-config.js'

// Config parsing lives in server-config.ts; re-exported so callers keep one module.
export {
  DEFAULT_PCR_SELECTION,
  parseTpmServerConfig,
  type TpmServerConfig,
} from './server-config.js'

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

/**
 * An agent key outside the TPM (a PKCS#11 token): admitted only when the operator allows it. The
 * SPKI must be exactly the CSR key's (canonical DER), since the quote's qualifying data commits to
 * these bytes; returns them. Nothing proves the key is non-extractable: that is what the opt-in
 * and the `tpm:agent_key:pkcs11` selector say.
 */
export function checkHsmAgentKey(cfg: TpmServerConfig, spki: Uint8Array, csrKey: KeyObject) {
  if (!cfg.allowHsmAgentKey) {
    refuse(
      'hsm_key',
      'the agent key is outside the TPM (agent_key_spki) and allow_hsm_agent_key is off',
    )
  }
  const key = step('hsm_key', 'agent_key_spki', () =>
    createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }),
  )
  if (keyTypeOf(key) === undefined) refuse('hsm_key', 'agent_key_spki is not a supported key type')
  const csr = csrKey.export({ type: 'spki', format: 'der' })
  if (csr.length !== spki.length || !timingSafeEqual(csr, spki)) {
    refuse('hsm_key', 'the CSR key is not the agent key the quote is bound to (agent_key_spki)')
  }
  return new Uint8Array(csr)
}

/** The same public key (OpenSSL's EVP_PKEY_eq: type, parameters and point or modulus). */
export function sameKey(a: KeyObject, b: KeyObject): boolean {
  const pub = (k: KeyObject) => (k.type === 'private' ? createPublicKey(k) : k)
  return pub(a).equals(pub(b))
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
const BANK_ALGS: ReadonlyMap<string, number> = new Map([...HASH_ALGS].map(([a, h]) => [h.name, a]))

export function wireToPcrValues(wire: TpmResponse['pcrValues']): PcrValues {
  const out = new Map<number, Map<number, Uint8Array>>()
  for (const [bank, values] of Object.entries(wire)) {
    const alg = BANK_ALGS.get(bank)
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
  const reference = cfg.eventLog ? referenceStateSource(cfg.eventLog, SOURCE) : () => undefined
  const ekChains = new EkChainCache()
  return {
    kind: 'NodeAttestor',
    name: TPM,
    async attest(payloadBytes, challenge: Challenger, ctx: AttestationContext) {
      const r = await prepare(cfg, ekChains, payloadBytes, ctx)
      return finish(cfg, r.state, await challenge(r.challenge), ctx, reference)
    },
    async begin(payloadBytes, ctx) {
      const r = await prepare(cfg, ekChains, payloadBytes, ctx)
      return { challenge: r.challenge, state: JSON.stringify(r.state) }
    },
    async resume(state, response, ctx) {
      return { result: await finish(cfg, parseRound(state), response, ctx, reference) }
    },
  }
}

async function prepare(
  cfg: TpmServerConfig,
  ekChains: EkChainCache,
  payloadBytes: Uint8Array,
  ctx: AttestationContext,
): Promise<{ challenge: Uint8Array; state: RoundState }> {
  if (cfg.caCertificates.length === 0 && cfg.ekHashes.size === 0) {
    refuse('config', 'no EK CA and no EK hash is configured: refusing every TPM')
  }
  const payload = parsePayload(payloadBytes)
  const ek = step('payload', 'ek_public', () => parseTpm2bPublic(payload.ekPublic))
  const ak = step('payload', 'ak_public', () => parseTpm2bPublic(payload.akPublic))
  const binding = agentKeyBinding(payload)
  const agentKey = payload.agentKeyPublic
    ? step('payload', 'agent_key_public', () => parseTpm2bPublic(payload.agentKeyPublic!))
    : undefined
  const ekSpki = step('payload', 'ek_public', () => publicKeySpki(ek))
  const ekHash = sha256Hex(ekSpki)
  const selectors: Selector[] = [{ type: TPM, value: `ek_hash:${ekHash}` }]

  // 1. Is this a genuine TPM's EK? A certificate must name exactly this key.
  let chainError: TpmAttestationError | undefined
  let trusted = false
  if (payload.ekCert) {
    // Parse and chain verification, or the cached outcome of the same (ek-chain-cache.ts).
    const ekc = ekChains.check(payload.ekCert, payload.ekChain ?? [], cfg.caCertificates, ctx.now)
    if (ekc.kind === 'unparsable') {
      // Some TPMs ship certificates that are not valid DER: only an EK hash can admit those.
      chainError = ekc.error
    } else {
      if (!Buffer.from(ekc.leafSpki).equals(Buffer.from(ekSpki))) {
        refuse('ek_mismatch', 'the EK public area is not the key the EK certificate certifies')
      }
      if (ekc.kind === 'verified') {
        trusted = true
        selectors.push({ type: TPM, value: `ek_ca:${ekc.issuerSha256}` })
        const attrs = ekc.attrs
        if (attrs.manufacturer)
          selectors.push({ type: TPM, value: `manufacturer:${attrs.manufacturer}` })
        if (attrs.model) selectors.push({ type: TPM, value: `model:${attrs.model}` })
        if (attrs.version) selectors.push({ type: TPM, value: `fw:${attrs.version}` })
      } else chainError = ekc.error
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
  let agentSpki: Uint8Array | undefined
  if (agentKey) {
    checkAgentKeyAttributes(agentKey)
    const agentKeyObject = step('agent_key', 'agent_key_public', () => publicKeyObject(agentKey))
    if (!sameKey(agentKeyObject, ctx.agentPublicKey)) {
      refuse('agent_key', 'the CSR key is not the TPM agent key the AK certifies')
    }
  } else agentSpki = checkHsmAgentKey(cfg, payload.agentKeySpki!, ctx.agentPublicKey)
  // Entries can require (or exclude) agents whose SVID key is outside the TPM.
  selectors.push({ type: TPM, value: `agent_key:${binding}` })

  // 3. One challenge: a credential only this EK's TPM can open for this AK, and a nonce.
  const secret = new Uint8Array(randomBytes(32))
  const nonce = new Uint8Array(randomBytes(32))
  const akName = objectName(ak)
  const cred = step('payload', 'MakeCredential to the EK', () => makeCredential(ek, akName, secret))
  const challenge = encodeChallenge({
    version: 1,
    credentialBlob: cred.credentialBlob,
    encryptedSecret: cred.encryptedSecret,
    nonce,
    pcrs: formatPcrSpec(cfg.pcrSelection),
    ...(cfg.eventLog ? { eventLog: true } : {}),
  })
  const state: RoundState = {
    v: 1,
    akPublic: hex(payload.akPublic),
    ...(payload.agentKeyPublic ? { agentKeyPublic: hex(payload.agentKeyPublic) } : {}),
    ...(agentSpki ? { agentKeySpki: hex(agentSpki) } : {}),
    nonce: hex(nonce),
    secretSha256: sha256Hex(secret),
    ekHash,
    selectors,
  }
  return { challenge, state }
}

async function finish(
  cfg: TpmServerConfig,
  round: RoundState,
  responseBytes: Uint8Array,
  ctx: AttestationContext,
  reference: () => ReferenceState | undefined,
): Promise<NodeAttestationResult> {
  const policy = { allowSha1: cfg.allowSha1 === true }
  const ak = step('response', 'round state', () => parseTpm2bPublic(fromHex(round.akPublic)))
  const akName = objectName(ak)
  const agentKey = round.agentKeyPublic
    ? step('response', 'round state', () => parseTpm2bPublic(fromHex(round.agentKeyPublic!)))
    : undefined
  const agentSpki = round.agentKeySpki ? fromHex(round.agentKeySpki) : undefined
  const nonce = fromHex(round.nonce)
  const ekHash = round.ekHash
  const selectors: Selector[] = [...round.selectors]
  const res = parseResponse(responseBytes)
  const want = Buffer.from(round.secretSha256, 'hex')
  if (!timingSafeEqual(createHash('sha256').update(res.secret).digest(), want)) {
    refuse('activation', 'the credential secret is wrong: the AK is not in the TPM of this EK')
  }
  const hasCertify = res.certifyMessage !== undefined && res.certifySignature !== undefined
  if (agentKey && !hasCertify) refuse('response', 'the response has no certify of the agent key')
  if (!agentKey && (res.certifyMessage || res.certifySignature)) {
    refuse('response', 'the response certifies a TPM key, but the agent key is agent_key_spki')
  }

  // 4. The quote: our nonce, our PCRs, a clock that only moves forward.
  const agentPath = `/spire/agent/${TPM}/${ekHash}`
  const prev = previousClock(await ctx.state.get(agentPath), hex(akName))
  const quote = step('quote', 'quote', () =>
    verifyQuote({
      akPublic: ak,
      message: res.quoteMessage,
      signature: res.quoteSignature,
      // With the agent key outside the TPM the quote also commits to that key.
      nonce: agentSpki ? hsmKeyQualifyingData(nonce, agentSpki) : nonce,
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

  // 4b. Measured boot: the log must replay to the signed PCRs; its facts meet the reference state
  // (re-read if the file changed, so re-attestation applies an updated one).
  const boot = cfg.eventLog
    ? verifyEventLog(cfg.eventLog, reference(), res.eventLog, quoted)
    : undefined

  // 5. The agent key lives in the same TPM as the AK, bound to this exchange by the nonce (a key
  // outside the TPM was bound by the quote itself, above).
  if (agentKey) {
    step('certify', 'certify', () =>
      verifyCertify({
        akPublic: ak,
        message: res.certifyMessage!,
        signature: res.certifySignature!,
        nonce,
        certifiedPublic: agentKey,
        policy,
      }),
    )
  }

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
  for (const value of boot?.selectors ?? []) selectors.push({ type: TPM, value })
  return { agentPath, selectors, canReattest: true }
}
