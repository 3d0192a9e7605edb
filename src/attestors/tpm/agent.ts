/**
 * The agent half of the TPM node attestor: sends the EK (certificate, NV chain, public area), the
 * AK and the agent's own TPM key; answers the one challenge with ActivateCredential, a quote over
 * the PCRs the server names and a certify of the agent key by the AK. The AK is made once and its
 * blob kept in dataDir, so restarts and re-attestations reuse it.
 */
import { type KeyObject, randomBytes } from 'node:crypto'
import { chmod, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { ConfigError, type Table } from '../../common/config.js'
import { withTpm } from '../../keymanager/tpm.js'
import {
  isConnectionFailure,
  type KeyBlob,
  type KeyHandle,
  type TpmContext,
} from '../../tpm/context.js'
import { EK_SLOTS, type EkSlot, extractDerCertificate } from '../../tpm/ek.js'
import { TpmError } from '../../tpm/errors.js'
import { DEFAULT_LIMITS } from '../../tpm/eventlog/parse.js'
import { createAk, type EkAlgorithm, openEk, openSrk } from '../../tpm/keys.js'
import {
  bankName,
  type PcrSelection,
  type PcrValues,
  parsePcrSpec,
} from '../../tpm/structures/pcr.js'
import { keyAlgorithmLabel, parseTpm2bPublic } from '../../tpm/structures/public.js'
import type { KeyAlgorithm } from '../../tpm/templates.js'
import type { AgentNodeAttestor } from '../types.js'
import {
  encodePayload,
  encodeResponse,
  hsmKeyQualifyingData,
  MAX_CHAIN,
  MAX_EVENT_LOG_COMPRESSED,
  parseChallenge,
  TPM,
  TpmAttestationError,
  type WirePcrValues,
} from './protocol.js'

export const DEFAULT_TCTI = 'device:/dev/tpmrm0'
/** Where Linux exposes the firmware's TCG event log (securityfs). */
export const DEFAULT_EVENT_LOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements'
// NV indices an EK certificate chain may occupy (TCG EK profile 2.x).
const CHAIN_FIRST = 0x01c00100
const CHAIN_LAST = 0x01c001ff

/** Anything holding the blob of the TPM key the agent SVID is issued for (e.g. a TpmKey). */
export interface AgentTpmKey {
  readonly blob: KeyBlob
}

export interface TpmAgentAttestorOptions {
  /** An open TPM, owned by the caller (also shared with the TPM key manager). */
  readonly tpm: TpmContext
  /** Where the AK blob is kept (ak.priv 0600, ak.pub 0644). */
  readonly dataDir: string
  /** Default: the first EK with a certificate in NV, rsa-2048 first; else rsa-2048. */
  readonly ekAlgorithm?: EkAlgorithm | undefined
  /** Default ecc-p256. An AK of another algorithm found in dataDir is replaced. */
  readonly akAlgorithm?: KeyAlgorithm | undefined
  /** Persist a recreated EK at its standard handle (RSA CreatePrimary takes seconds on chips). */
  readonly persistEk?: boolean | undefined
  /**
   * The key the SVID will be issued for (asked at every attestation), exactly one of: `agentKey`,
   * TPM-resident, certified by the AK; `hsmAgentKey`, held outside the TPM (a PKCS#11 token), whose
   * SPKI the quote's qualifying data commits to (the server needs allow_hsm_agent_key).
   */
  readonly agentKey?: () => AgentTpmKey | Promise<AgentTpmKey>
  readonly hsmAgentKey?: () =>
    | { readonly publicKey: KeyObject }
    | Promise<{ readonly publicKey: KeyObject }>
  /** The TCG event log sent when the server asks (default DEFAULT_EVENT_LOG_PATH). */
  readonly eventLogPath?: string | undefined
}

/** The [agent] TPM settings: tcti, ek_algorithm, ak_algorithm, persist_ek. */
export interface TpmAgentConfig {
  readonly tcti: string
  readonly ekAlgorithm: EkAlgorithm | undefined
  readonly akAlgorithm: KeyAlgorithm
  readonly persistEk: boolean
  readonly eventLogPath: string
}

const EK_ALGS: readonly EkAlgorithm[] = ['rsa-2048', 'ecc-p256', 'ecc-p384']
const AK_ALGS: readonly KeyAlgorithm[] = ['ecc-p256', 'rsa-2048']

/** Validates an agent-side [plugins.NodeAttestor.tpm] table. */
export function parseTpmAgentConfig(raw: Table): TpmAgentConfig {
  const problems: string[] = []
  const known = ['tcti', 'ek_algorithm', 'ak_algorithm', 'persist_ek', 'event_log_path']
  for (const k of Object.keys(raw)) if (!known.includes(k)) problems.push(`${k}: unknown key`)
  const str = (k: string, def: string | undefined, allowed?: readonly string[]) => {
    const v = raw[k]
    if (v === undefined) return def
    if (typeof v !== 'string' || v === '' || (allowed && !allowed.includes(v))) {
      problems.push(`${k}: must be ${allowed ? `one of ${allowed.join(', ')}` : 'a string'}`)
      return def
    }
    return v
  }
  const tcti = str('tcti', DEFAULT_TCTI)!
  const ekAlgorithm = str('ek_algorithm', undefined, EK_ALGS) as EkAlgorithm | undefined
  const akAlgorithm = str('ak_algorithm', 'ecc-p256', AK_ALGS) as KeyAlgorithm
  let persistEk = false
  if (raw.persist_ek !== undefined) {
    if (typeof raw.persist_ek !== 'boolean') problems.push('persist_ek: must be true or false')
    else persistEk = raw.persist_ek
  }
  const eventLogPath = str('event_log_path', DEFAULT_EVENT_LOG_PATH)!
  if (problems.length > 0) throw new ConfigError('plugins.NodeAttestor.tpm', problems)
  return { tcti, ekAlgorithm, akAlgorithm, persistEk, eventLogPath }
}

/**
 * Reads the event log, at most the server's cap (securityfs reports size 0, so read until EOF),
 * and gzips it for the wire. Too big or unreadable is the agent's error, said here where it is
 * fixable, not as a refusal from the server.
 */
export async function readEventLog(path: string): Promise<Uint8Array> {
  const max = DEFAULT_LIMITS.maxBytes
  let fh: Awaited<ReturnType<typeof open>>
  try {
    fh = await open(path, 'r')
  } catch (err) {
    throw new TpmAttestationError(
      'event_log',
      `cannot read the event log ${path}: ${(err as Error).message}`,
      undefined,
      err,
    )
  }
  const chunks: Buffer[] = []
  let total = 0
  try {
    for (;;) {
      const buf = Buffer.alloc(64 * 1024)
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      total += bytesRead
      if (total > max) {
        throw new TpmAttestationError('event_log', `the event log ${path} is over ${max} bytes`)
      }
      chunks.push(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  const gz = new Uint8Array(gzipSync(Buffer.concat(chunks), { level: 9 }))
  if (gz.length > MAX_EVENT_LOG_COMPRESSED) {
    throw new TpmAttestationError(
      'event_log',
      `the event log ${path} compresses to ${gz.length} bytes, over the protocol's ${MAX_EVENT_LOG_COMPRESSED}`,
    )
  }
  return gz
}

/** A TPMT_PUBLIC as the TPM2B_PUBLIC the wire carries. */
function tpm2b(raw: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + raw.length)
  out[0] = raw.length >> 8
  out[1] = raw.length & 0xff
  out.set(raw, 2)
  return out
}

/** Certificates concatenated in one NV index (padding after the last one is ignored). */
export function splitDerCertificates(nv: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = []
  let rest = nv
  while (rest.length > 1 && rest[0] === 0x30) {
    const der = extractDerCertificate(rest)
    out.push(der)
    rest = rest.subarray(der.length)
  }
  return out
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err
    ? String((err as { code: unknown }).code)
    : undefined
}

/**
 * A load failure that means the blob belongs to no key of this TPM (integrity, binding, size: TPM
 * errors), as opposed to the TPM being unreachable or out of slots, which says nothing about it.
 */
function blobRejected(err: unknown): boolean {
  if (!(err instanceof TpmError) || isConnectionFailure(err)) return false
  const warning = err.layer === 0 && (err.rc & 0x900) === 0x900
  return !warning
}

function sameValues(a: PcrValues, b: PcrValues): boolean {
  for (const [bank, m] of a) {
    for (const [i, v] of m) {
      if (!Buffer.from(v).equals(Buffer.from(b.get(bank)?.get(i) ?? []))) return false
    }
  }
  return true
}

function toWire(values: PcrValues): WirePcrValues {
  const out: Record<string, Record<string, string>> = {}
  for (const [bank, m] of values) {
    const b: Record<string, string> = {}
    for (const [i, v] of m) b[String(i)] = Buffer.from(v).toString('hex')
    out[bankName(bank)] = b
  }
  return out
}

/** The TPM node attestor, agent half. */
export function tpmAgentAttestor(o: TpmAgentAttestorOptions): AgentNodeAttestor {
  const { tpm } = o
  if ((o.agentKey === undefined) === (o.hsmAgentKey === undefined)) {
    throw new Error('tpmAgentAttestor: give exactly one of agentKey and hsmAgentKey')
  }
  const akAlg = o.akAlgorithm ?? 'ecc-p256'
  const akPriv = join(o.dataDir, 'ak.priv')
  const akPub = join(o.dataDir, 'ak.pub')
  let slot: EkSlot | undefined
  let akBlob: KeyBlob | undefined
  // The HSM key's SPKI this attempt's payload named: the quote must commit to the very same key.
  let sentSpki: Uint8Array | undefined

  // An AK this process made for an attempt that has not got through the TPM's part yet. It goes to
  // disk only then (persistAk): a failed attempt leaves no AK files, and the stored AK (the one
  // the working identity was attested with) is replaced only by an AK that did its job.
  let pendingAk: KeyBlob | undefined

  /** The stored AK when it is of the right algorithm and loads in this TPM; else a new one. */
  const ensureAk = async (): Promise<KeyBlob> => {
    let stored: KeyBlob | undefined
    try {
      stored = {
        private: new Uint8Array(await readFile(akPriv)),
        public: new Uint8Array(await readFile(akPub)),
      }
      if (keyAlgorithmLabel(parseTpm2bPublic(stored.public)) !== akAlg) stored = undefined
    } catch (err) {
      if (errCode(err) !== 'ENOENT' && errCode(err) !== 'ERR_TPM_STRUCTURE') throw err
      stored = undefined
    }
    await using srk = await openSrk(tpm)
    for (const blob of [stored, pendingAk]) {
      if (!blob) continue
      try {
        await (await tpm.loadKey(srk, blob)).dispose()
        return blob
      } catch (err) {
        // Only "this blob is not this TPM's" replaces it; a TPM that is down or busy does not.
        if (!blobRejected(err)) throw err
      }
    }
    pendingAk = await createAk(tpm, srk, akAlg)
    return pendingAk
  }

  /** Stores the AK an attempt used, if it is new. Private first, both via rename. */
  const persistAk = async (blob: KeyBlob): Promise<void> => {
    if (blob !== pendingAk) return
    await mkdir(o.dataDir, { recursive: true, mode: 0o700 })
    const suffix = `.${randomBytes(6).toString('hex')}.tmp`
    try {
      await writeFile(`${akPriv}${suffix}`, blob.private, { mode: 0o600, flag: 'wx' })
      await chmod(`${akPriv}${suffix}`, 0o600)
      await writeFile(`${akPub}${suffix}`, blob.public, { mode: 0o644, flag: 'wx' })
      // A crash between the renames leaves a new private with the old public: that pair does not
      // load, so the next attempt makes a new AK.
      await rename(`${akPriv}${suffix}`, akPriv)
      await rename(`${akPub}${suffix}`, akPub)
      pendingAk = undefined
    } finally {
      await rm(`${akPriv}${suffix}`, { force: true })
      await rm(`${akPub}${suffix}`, { force: true })
    }
  }

  const chooseSlot = (nv: ReadonlySet<number>): EkSlot => {
    if (o.ekAlgorithm) return EK_SLOTS.find((s) => s.algorithm === o.ekAlgorithm)!
    return EK_SLOTS.find((s) => nv.has(s.certIndex)) ?? EK_SLOTS[0]!
  }

  return {
    kind: 'NodeAttestor',
    name: TPM,
    async payload() {
      const agentKeyField = o.hsmAgentKey
        ? {
            agentKeySpki: new Uint8Array(
              (await o.hsmAgentKey()).publicKey.export({ type: 'spki', format: 'der' }),
            ),
          }
        : { agentKeyPublic: (await o.agentKey!()).blob.public }
      sentSpki = agentKeyField.agentKeySpki
      return withTpm(tpm, async () => {
        akBlob = await ensureAk()
        const nv = new Set(await tpm.listHandles(0x01000000))
        const s = chooseSlot(nv)
        slot = s
        const ekCert = nv.has(s.certIndex)
          ? extractDerCertificate(await tpm.nvReadAll(s.certIndex))
          : undefined
        const ekChain: Uint8Array[] = []
        for (const idx of [...nv].filter((h) => h >= CHAIN_FIRST && h <= CHAIN_LAST).sort()) {
          ekChain.push(...splitDerCertificates(await tpm.nvReadAll(idx)))
        }
        if (ekChain.length > MAX_CHAIN) {
          // The server refuses longer chains before parsing them; say so here, where it is fixable.
          throw new TpmAttestationError(
            'chain',
            `this TPM's NV holds ${ekChain.length} EK intermediates; the protocol carries at most ${MAX_CHAIN}`,
          )
        }
        await using ek = await openEk(tpm, s.algorithm)
        if (o.persistEk && !ek.persistent) await tpm.evictControl(ek, s.persistentHandle)
        return encodePayload({
          version: 1,
          ...(ekCert ? { ekCert } : {}),
          ...(ekChain.length ? { ekChain } : {}),
          ekPublic: tpm2b(ek.public.raw),
          akPublic: akBlob.public,
          ...agentKeyField,
        })
      })
    },

    async respond(challengeBytes) {
      const c = parseChallenge(challengeBytes)
      let selection: PcrSelection
      try {
        selection = parsePcrSpec(c.pcrs)
      } catch (err) {
        throw new TpmAttestationError('challenge', `PCR selection: ${(err as Error).message}`)
      }
      if (!slot || !akBlob) {
        throw new TpmAttestationError('challenge', 'a challenge came before the payload was made')
      }
      const ekSlot = slot
      const ak0 = akBlob
      // Read before the TPM work: the log is of this boot, so it cannot change under the quote
      // (the kernel only appends to the runtime IMA log, which is another file).
      const eventLog = c.eventLog
        ? await readEventLog(o.eventLogPath ?? DEFAULT_EVENT_LOG_PATH)
        : undefined
      const spki = sentSpki
      if (o.hsmAgentKey && !spki) {
        throw new TpmAttestationError('challenge', 'a challenge came before the payload was made')
      }
      // A TPM key is certified with the plain nonce; an HSM key is bound into the quote instead.
      const agentBlob = spki ? undefined : (await o.agentKey!()).blob
      const qualifying = spki ? hsmKeyQualifyingData(c.nonce, spki) : c.nonce
      return withTpm(tpm, async () => {
        // Slot order for a 3-object TPM: SRK+AK+key, SRK flushed, then the EK beside them.
        let ak: KeyHandle | undefined
        let key: KeyHandle | undefined
        try {
          {
            await using srk = await openSrk(tpm)
            ak = await tpm.loadKey(srk, ak0)
            if (agentBlob) key = await tpm.loadKey(srk, agentBlob)
          }
          let secret: Uint8Array
          {
            await using ek = await openEk(tpm, ekSlot.algorithm)
            secret = await tpm.activateCredential(ak, ek, c.credentialBlob, c.encryptedSecret)
          }
          // PCRs can move between the read and the quote: read around it until they hold still.
          let values = await tpm.pcrRead(selection)
          let quote = await tpm.quote(ak, qualifying, selection)
          for (let i = 0; i < 3; i++) {
            const after = await tpm.pcrRead(selection)
            const still = sameValues(values, after)
            values = after
            if (still) break
            quote = await tpm.quote(ak, qualifying, selection)
          }
          const certify = key ? await tpm.certify(key, ak, c.nonce) : undefined
          await persistAk(ak0)
          return encodeResponse({
            version: 1,
            secret,
            quoteMessage: quote.message,
            quoteSignature: quote.signature,
            pcrValues: toWire(values),
            ...(certify
              ? { certifyMessage: certify.message, certifySignature: certify.signature }
              : {}),
            ...(eventLog ? { eventLog } : {}),
          })
        } finally {
          await key?.dispose()
          await ak?.dispose()
        }
      })
    },
  }
}
