/**
 * Wire types of the TPM node attestor, shared by the agent and server halves. Every message is
 * versioned JSON with base64 byte fields; parsing is strict (unknown keys, wrong types, bad base64
 * are refused) because the server reads these from an unauthenticated peer.
 */
import { createHash } from 'node:crypto'
import { SpiffeEdgeError } from '../../errors.js'
import type { VerifyReason } from '../../tpm/verify.js'

export const TPM = 'tpm'
export const PROTOCOL_VERSION = 1

/** Why a TPM attestation was refused: stable values tests and operators can match on. */
export type TpmAttestReason =
  | 'config'
  | 'payload'
  | 'response'
  | 'challenge'
  | 'ek_untrusted'
  | 'chain'
  | 'ek_mismatch'
  | 'ak_attributes'
  | 'agent_key'
  | 'activation'
  | 'quote'
  | 'pcr_policy'
  | 'certify'
  | 'hsm_key'
  | 'event_log'
  | 'boot_policy'

const REMEDIES: Readonly<Record<TpmAttestReason, string>> = {
  config: 'configure ek_ca_bundle, ek_ca_dir or ek_hashes for the tpm node attestor',
  payload: 'the agent sent a malformed TPM payload: upgrade or fix the agent',
  response: 'the agent sent a malformed challenge response: upgrade or fix the agent',
  challenge: 'the server sent a malformed TPM challenge: check the server version',
  ek_untrusted: 'add the manufacturer CA (ek_ca_bundle/ek_ca_dir) or the EK hash (ek_hashes)',
  chain: "add the TPM manufacturer's root CA to ek_ca_bundle or ek_ca_dir",
  ek_mismatch: 'the EK public area is not the key its certificate names: check the EK template',
  ak_attributes: 'create the AK as a restricted, fixedTPM signing key',
  agent_key: 'issue the SVID for a non-exportable TPM signing key and send its public area',
  activation: 'the AK and EK are not in the same TPM, or the evidence is replayed',
  quote: 'the quote does not verify: attest again with a fresh nonce',
  pcr_policy: 'the node booted into a state the PCR policy does not allow: update pcr_policy',
  certify: 'have the AK certify exactly the agent key the SVID is issued for',
  hsm_key:
    'an agent key outside the TPM (PKCS#11) is admitted only with allow_hsm_agent_key = true on the server, bound by the quote to the CSR key',
  event_log:
    "the node's TPM event log does not parse or does not replay to the quoted PCRs: send the log of this boot, unaltered (event_log_path)",
  boot_policy:
    'the node booted into a state the reference state does not allow: update the node or reference_state',
}

/** A refused TPM attestation; `reason` says which check failed, `detail` the quote's own. */
export class TpmAttestationError extends SpiffeEdgeError {
  readonly reason: TpmAttestReason
  readonly detail: VerifyReason | undefined

  constructor(reason: TpmAttestReason, message: string, detail?: VerifyReason, cause?: unknown) {
    const tag = detail ? `${reason}/${detail}` : reason
    super('ERR_ATTESTATION_FAILED', `tpm attestation refused [${tag}]: ${message}`, {
      remedy: REMEDIES[reason],
      cause,
      publicMessage: `tpm attestation refused [${tag}]`,
    })
    this.reason = reason
    this.detail = detail
  }
}

/** First message, agent → server. */
export interface TpmPayload {
  readonly version: 1
  /** DER EK certificate, trimmed of NV headers and padding. */
  readonly ekCert?: Uint8Array
  /** DER intermediates (NV 0x01c00100..0x01c001ff), issuer order not required. */
  readonly ekChain?: readonly Uint8Array[]
  /** TPM2B_PUBLIC of the EK and the AK. */
  readonly ekPublic: Uint8Array
  readonly akPublic: Uint8Array
  /**
   * The agent's own (SVID) key: exactly one of these. `agentKeyPublic` is the TPM2B_PUBLIC of a
   * TPM-resident key the AK certifies; `agentKeySpki` the DER SubjectPublicKeyInfo of a key held
   * elsewhere (a PKCS#11 token), bound by the quote's qualifying data (hsmKeyQualifyingData).
   */
  readonly agentKeyPublic?: Uint8Array
  readonly agentKeySpki?: Uint8Array
}

/** Where the agent SVID key lives, as the payload says and the `tpm:agent_key:` selector names. */
export type AgentKeyBinding = 'tpm' | 'pkcs11'

export function agentKeyBinding(p: TpmPayload): AgentKeyBinding {
  return p.agentKeySpki ? 'pkcs11' : 'tpm'
}

const HSM_BINDING_DOMAIN = Buffer.from('spiffe-edge tpm hsm agent key v1\0', 'utf8')

/**
 * The quote's qualifying data when the agent key is outside the TPM: SHA-256(domain || server
 * nonce || SHA-256(SPKI DER)). The AK signs it, so the quote answers this challenge (the nonce)
 * for this key (the SPKI) only: a quote bound to another key, or replayed from another exchange,
 * does not verify. The CSR signature proves the agent holds the private key.
 */
export function hsmKeyQualifyingData(nonce: Uint8Array, spki: Uint8Array): Uint8Array {
  const keyHash = createHash('sha256').update(spki).digest()
  return new Uint8Array(
    createHash('sha256').update(HSM_BINDING_DOMAIN).update(nonce).update(keyHash).digest(),
  )
}

/** The server's single challenge. */
export interface TpmChallenge {
  readonly version: 1
  /** MakeCredential output: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET. */
  readonly credentialBlob: Uint8Array
  readonly encryptedSecret: Uint8Array
  /** Qualifying data for the quote and the certify: 32 random bytes. */
  readonly nonce: Uint8Array
  /** PCRs to quote, tpm2-tools style: sha256:0,1,7. */
  readonly pcrs: string
  /** The server replays the boot event log: send it with the quote. */
  readonly eventLog?: boolean
}

/** PCR values by bank name (sha256), then decimal index, as lowercase hex. */
export type WirePcrValues = Readonly<Record<string, Readonly<Record<string, string>>>>

export interface TpmResponse {
  readonly version: 1
  readonly secret: Uint8Array
  readonly quoteMessage: Uint8Array
  readonly quoteSignature: Uint8Array
  readonly pcrValues: WirePcrValues
  /** The AK's certify of a TPM agent key; absent when the agent key is outside the TPM. */
  readonly certifyMessage?: Uint8Array
  readonly certifySignature?: Uint8Array
  /** The TCG event log (binary_bios_measurements), gzip-compressed, when the challenge asks. */
  readonly eventLog?: Uint8Array
}

// Bounds: nothing here is legitimately bigger (an EK cert is ~1-2 KiB, a chain a few certs).
export const MAX_MESSAGE = 64 * 1024
/**
 * A response carrying an event log: under the node API's 128 KiB AttestAgent message cap with the
 * other fields. Logs compress 3-6x (zero digests, repeated GUIDs), so 84 KiB holds real ones.
 */
export const MAX_RESPONSE_MESSAGE = 120 * 1024
export const MAX_EVENT_LOG_COMPRESSED = 84 * 1024
const MAX_FIELD = 16 * 1024
/** One DER certificate (EK or intermediate): real ones are 1-2 KiB. */
export const MAX_CERT = 8 * 1024
/** Intermediates the agent may send; each one multiplies the chain search. */
export const MAX_CHAIN = 4
// One decoder for every message: a fatal decoder keeps no state between whole-buffer decodes.
const UTF8 = new TextDecoder('utf-8', { fatal: true })
// PCR indices as JSON object keys: decimal, no leading zeros (TPM 2.0 has 24).
const PCR_INDICES: ReadonlySet<string> = new Set(Array.from({ length: 24 }, (_, i) => String(i)))
const LOWER_HEX = /^[0-9a-f]+$/

type Kind = 'payload' | 'response' | 'challenge'

class Fields {
  private readonly obj: Record<string, unknown>
  private readonly kind: Kind
  private readonly what: string

  constructor(
    bytes: Uint8Array,
    kind: Kind,
    what: string,
    known: readonly string[],
    maxMessage = MAX_MESSAGE,
  ) {
    this.kind = kind
    this.what = what
    if (bytes.length > maxMessage) this.fail(`is ${bytes.length} bytes, over ${maxMessage}`)
    let v: unknown
    try {
      v = JSON.parse(UTF8.decode(bytes))
    } catch (err) {
      throw new TpmAttestationError(kind, `${what} is not JSON`, undefined, err)
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail('is not a JSON object')
    this.obj = v as Record<string, unknown>
    for (const k of Object.keys(this.obj)) {
      if (!known.includes(k)) this.fail(`has an unknown field '${k}'`)
    }
    if (this.obj.version !== PROTOCOL_VERSION) {
      this.fail(`version is ${JSON.stringify(this.obj.version)}, this server speaks 1`)
    }
  }

  fail(why: string): never {
    throw new TpmAttestationError(this.kind, `${this.what} ${why}`)
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined
  }

  bytes(key: string, value: unknown = this.obj[key], label = key, max = MAX_FIELD): Uint8Array {
    if (typeof value !== 'string' || value.length === 0) {
      this.fail(`field '${label}' must be a non-empty base64 string`)
    }
    // Size first, from the text alone: nothing oversize is decoded, let alone parsed.
    if (value.length > Math.ceil(max / 3) * 4) this.fail(`field '${label}' is over ${max} bytes`)
    const buf = Buffer.from(value, 'base64')
    // Strict: only the canonical (padded) encoding of what decoded. Node's decoder skips what it
    // does not know, so the re-encoding differs for any other text; cheaper than a pattern.
    if (value.length % 4 !== 0 || buf.toString('base64') !== value) {
      this.fail(`field '${label}' is not base64`)
    }
    if (buf.length > max) this.fail(`field '${label}' is over ${max} bytes`)
    return new Uint8Array(buf)
  }

  bytesList(key: string, max = MAX_FIELD): Uint8Array[] {
    const v = this.obj[key]
    if (!Array.isArray(v) || v.length > MAX_CHAIN) {
      this.fail(`field '${key}' must be an array of at most ${MAX_CHAIN} base64 strings`)
    }
    return v.map((x, i) => this.bytes(key, x, `${key}[${i}]`, max))
  }

  boolean(key: string): boolean {
    const v = this.obj[key]
    if (typeof v !== 'boolean') this.fail(`field '${key}' must be true or false`)
    return v
  }

  string(key: string): string {
    const v = this.obj[key]
    if (typeof v !== 'string' || v.length === 0 || v.length > 256) {
      this.fail(`field '${key}' must be a short non-empty string`)
    }
    return v
  }

  pcrValues(key: string): WirePcrValues {
    const v = this.obj[key]
    const isObj = (x: unknown): x is Record<string, unknown> =>
      typeof x === 'object' && x !== null && !Array.isArray(x)
    if (!isObj(v)) this.fail(`field '${key}' must be an object of banks`)
    const out: Record<string, Record<string, string>> = {}
    for (const [bank, values] of Object.entries(v)) {
      if (!/^[a-z0-9]{1,16}$/.test(bank) || !isObj(values)) {
        this.fail(`field '${key}.${bank}' must be an object of PCR values`)
      }
      const b: Record<string, string> = {}
      for (const [index, hex] of Object.entries(values)) {
        if (!PCR_INDICES.has(index)) {
          this.fail(`field '${key}.${bank}' has a bad PCR index '${index.slice(0, 8)}'`)
        }
        if (
          typeof hex !== 'string' ||
          hex.length % 2 !== 0 ||
          hex.length > 128 ||
          !LOWER_HEX.test(hex)
        ) {
          this.fail(`field '${key}.${bank}.${index}' must be lowercase hex`)
        }
        b[index] = hex
      }
      out[bank] = b
    }
    return out
  }
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')
const json = (o: unknown) => new Uint8Array(Buffer.from(JSON.stringify(o), 'utf8'))

export function encodePayload(p: TpmPayload): Uint8Array {
  return json({
    version: PROTOCOL_VERSION,
    ...(p.ekCert ? { ek_cert: b64(p.ekCert) } : {}),
    ...(p.ekChain && p.ekChain.length > 0 ? { ek_chain: p.ekChain.map(b64) } : {}),
    ek_public: b64(p.ekPublic),
    ak_public: b64(p.akPublic),
    ...(p.agentKeyPublic ? { agent_key_public: b64(p.agentKeyPublic) } : {}),
    ...(p.agentKeySpki ? { agent_key_spki: b64(p.agentKeySpki) } : {}),
  })
}

export function parsePayload(bytes: Uint8Array): TpmPayload {
  const f = new Fields(bytes, 'payload', 'the TPM payload', [
    'version',
    'ek_cert',
    'ek_chain',
    'ek_public',
    'ak_public',
    'agent_key_public',
    'agent_key_spki',
  ])
  if (f.has('agent_key_public') === f.has('agent_key_spki')) {
    f.fail('must carry exactly one of agent_key_public (TPM key) and agent_key_spki (HSM key)')
  }
  return {
    version: PROTOCOL_VERSION,
    ...(f.has('ek_cert') ? { ekCert: f.bytes('ek_cert', undefined, 'ek_cert', MAX_CERT) } : {}),
    ...(f.has('ek_chain') ? { ekChain: f.bytesList('ek_chain', MAX_CERT) } : {}),
    ekPublic: f.bytes('ek_public'),
    akPublic: f.bytes('ak_public'),
    ...(f.has('agent_key_public') ? { agentKeyPublic: f.bytes('agent_key_public') } : {}),
    ...(f.has('agent_key_spki') ? { agentKeySpki: f.bytes('agent_key_spki') } : {}),
  }
}

export function encodeChallenge(c: TpmChallenge): Uint8Array {
  return json({
    version: PROTOCOL_VERSION,
    credential_blob: b64(c.credentialBlob),
    encrypted_secret: b64(c.encryptedSecret),
    nonce: b64(c.nonce),
    pcrs: c.pcrs,
    ...(c.eventLog ? { event_log: true } : {}),
  })
}

/** The agent parses the server's challenge; a malformed one is the server's fault. */
export function parseChallenge(bytes: Uint8Array): TpmChallenge {
  const f = new Fields(bytes, 'challenge', 'the server challenge', [
    'version',
    'credential_blob',
    'encrypted_secret',
    'nonce',
    'pcrs',
    'event_log',
  ])
  const nonce = f.bytes('nonce')
  if (nonce.length > 32) f.fail('nonce is longer than 32 bytes')
  return {
    version: PROTOCOL_VERSION,
    credentialBlob: f.bytes('credential_blob'),
    encryptedSecret: f.bytes('encrypted_secret'),
    nonce,
    pcrs: f.string('pcrs'),
    ...(f.has('event_log') && f.boolean('event_log') ? { eventLog: true } : {}),
  }
}

export function encodeResponse(r: TpmResponse): Uint8Array {
  return json({
    version: PROTOCOL_VERSION,
    secret: b64(r.secret),
    quote_message: b64(r.quoteMessage),
    quote_signature: b64(r.quoteSignature),
    pcr_values: r.pcrValues,
    ...(r.certifyMessage ? { certify_message: b64(r.certifyMessage) } : {}),
    ...(r.certifySignature ? { certify_signature: b64(r.certifySignature) } : {}),
    ...(r.eventLog ? { event_log: b64(r.eventLog) } : {}),
  })
}

export function parseResponse(bytes: Uint8Array): TpmResponse {
  const f = new Fields(
    bytes,
    'response',
    'the challenge response',
    [
      'version',
      'secret',
      'quote_message',
      'quote_signature',
      'pcr_values',
      'certify_message',
      'certify_signature',
      'event_log',
    ],
    MAX_RESPONSE_MESSAGE,
  )
  return {
    version: PROTOCOL_VERSION,
    secret: f.bytes('secret'),
    quoteMessage: f.bytes('quote_message'),
    quoteSignature: f.bytes('quote_signature'),
    pcrValues: f.pcrValues('pcr_values'),
    ...(f.has('certify_message') ? { certifyMessage: f.bytes('certify_message') } : {}),
    ...(f.has('certify_signature') ? { certifySignature: f.bytes('certify_signature') } : {}),
    ...(f.has('event_log')
      ? { eventLog: f.bytes('event_log', undefined, 'event_log', MAX_EVENT_LOG_COMPRESSED) }
      : {}),
  }
}
