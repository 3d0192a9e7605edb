/**
 * The TPM sealer with a PCR policy (`[agent.cache] seal_pcrs`): as TpmSealer, the key-encryption
 * key is HKDF over a deterministic RSASSA-PKCS1-v1_5 signature by a TPM-resident key, but that key
 * has authPolicy = PolicyPCR(sha256: seal_pcrs, the values at its creation) and userWithAuth
 * clear: the TPM signs with it only in a policy session whose PolicyPCR saw those values, so a
 * boot that measured something else (PCRs extended differently) cannot derive the KEK.
 *
 * One key per PCR state (key id `cache-kek-pcr-<policy digest prefix>`): a key is never replaced
 * or rewritten (its file is linked into place, never renamed over), a cache names the key it was
 * wrapped under, and a boot with other values gets a new key for what it writes from then on
 * (the old caches stay closed to it). The key file records the PCR values next to the blob, so a
 * refusal says which PCRs changed; they are checked against the key's authPolicy before use.
 */
import { createHash, hkdf, verify } from 'node:crypto'
import { link, mkdir, open, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { writeTempFile } from '../common/temp-file.js'
import { SpiffeEdgeError } from '../errors.js'
import { TPM_ALG } from '../tpm/constants.js'
import { isConnectionFailure, type KeyBlob, type TpmContext } from '../tpm/context.js'
import { openSrk } from '../tpm/keys.js'
import { pcrValuesDigest, policyPcrDigest } from '../tpm/policy.js'
import type { PcrSelection, PcrValues } from '../tpm/structures/pcr.js'
import { parseTpm2bPublic, publicKeyObject } from '../tpm/structures/public.js'
import { parseSignature } from '../tpm/structures/signature.js'
import { policySigningKeyTemplate } from '../tpm/templates.js'
import { type CacheSealer, sealError, unwrapWith, wrapWith } from './sealer.js'
import { loadUnderSrk, withTpm } from './tpm.js'

const hkdfAsync = promisify(hkdf)
const DOMAIN = 'spiffe-edge cache kek v1 tpm-pcr\n'
const PREFIX = 'cache-kek-pcr-'
const SUFFIX = '.tpmkey'
/** Distinct PCR states a data dir keeps keys for; past this, new caches are not written. */
export const MAX_PCR_KEYS = 16
const MAX_KEY_FILE_BYTES = 16 << 10
const WRAP_VERSION = 1

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

interface PcrKey {
  readonly id: string
  readonly blob: KeyBlob
  readonly values: PcrValues
  readonly pcrDigest: Uint8Array
}

function mismatch(changed: number[], id: string): SpiffeEdgeError {
  return new SpiffeEdgeError(
    'ERR_CACHE_PCR_MISMATCH',
    `the PCR values (sha256 PCR ${changed.join(', ')}) differ from those the cache key ${id} is bound to: ` +
      'this boot measured something else, so the TPM will not release the cache key',
    {
      remedy:
        'if the boot change is expected (firmware or bootloader update), nothing to do: the agent ' +
        'discards the cache and fetches its SVIDs again once the server answers; otherwise investigate the boot chain',
    },
  )
}

export class TpmPcrSealer implements CacheSealer {
  readonly kind = 'tpm-pcr'
  readonly warning = undefined
  private readonly tpm: TpmContext
  private readonly dir: string
  private readonly selection: PcrSelection

  /** `dir` holds the keys' blobs (0600, useless without this TPM); `pcrs` in the sha256 bank. */
  constructor(tpm: TpmContext, dir: string, pcrs: readonly number[]) {
    this.tpm = tpm
    this.dir = dir
    this.selection = [{ hashAlg: TPM_ALG.SHA256, pcrs: [...new Set(pcrs)].sort((a, b) => a - b) }]
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}${SUFFIX}`)
  }

  private async currentValues(): Promise<PcrValues> {
    try {
      return await this.tpm.pcrRead(this.selection)
    } catch (err) {
      throw sealError('cannot read the PCRs the cache key is bound to', err)
    }
  }

  private async readKey(id: string): Promise<PcrKey | undefined> {
    let text: string
    try {
      const fh = await open(this.pathOf(id), 'r')
      try {
        if ((await fh.stat()).size > MAX_KEY_FILE_BYTES) throw new Error('too large')
        text = await fh.readFile('utf8')
      } finally {
        await fh.close()
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return undefined
      throw sealError(`cannot read the TPM cache key ${id}`, err)
    }
    try {
      const j = JSON.parse(text) as Record<string, unknown>
      const vals = j.pcr_values as Record<string, unknown>
      if (j.version !== 1 || typeof j.private !== 'string' || typeof j.public !== 'string')
        throw new Error('not a version 1 key file')
      const blob: KeyBlob = {
        private: new Uint8Array(Buffer.from(j.private, 'base64')),
        public: new Uint8Array(Buffer.from(j.public, 'base64')),
      }
      const bank = new Map<number, Uint8Array>()
      for (const p of this.selection[0]!.pcrs) {
        const v = vals?.[String(p)]
        if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) throw new Error(`no PCR ${p} value`)
        bank.set(p, new Uint8Array(Buffer.from(v, 'hex')))
      }
      const values: PcrValues = new Map([[TPM_ALG.SHA256, bank]])
      // The recorded values must be the ones the TPM enforces: the key's own authPolicy.
      const policy = policyPcrDigest(TPM_ALG.SHA256, this.selection, values)
      if (hex(parseTpm2bPublic(blob.public).authPolicy) !== hex(policy))
        throw new Error("the recorded PCR values do not match the key's authPolicy")
      return {
        id,
        blob,
        values,
        pcrDigest: pcrValuesDigest(TPM_ALG.SHA256, this.selection, values),
      }
    } catch (err) {
      throw sealError(`the TPM cache key file ${this.pathOf(id)} is corrupt`, err)
    }
  }

  /** The key for the current PCR values, created (once; never over another) when there is none. */
  private async keyForNow(): Promise<PcrKey> {
    const values = await this.currentValues()
    const policy = policyPcrDigest(TPM_ALG.SHA256, this.selection, values)
    const id = `${PREFIX}${hex(policy).slice(0, 16)}`
    const have = await this.readKey(id)
    if (have) return have
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    const existing = (await readdir(this.dir)).filter(
      (n) => n.startsWith(PREFIX) && n.endsWith(SUFFIX),
    )
    if (existing.length >= MAX_PCR_KEYS) {
      throw sealError(
        `${this.dir} already holds ${existing.length} PCR-bound cache keys (one per boot state seen); not making more`,
      )
    }
    const made = await withTpm(this.tpm, async () => {
      await using srk = await openSrk(this.tpm)
      return await this.tpm.createKey(srk, policySigningKeyTemplate('rsa-2048', policy))
    })
    const bank = values.get(TPM_ALG.SHA256)!
    const text = JSON.stringify({
      version: 1,
      key_type: 'rsa-2048',
      private: Buffer.from(made.private).toString('base64'),
      public: Buffer.from(made.public).toString('base64'),
      pcr_bank: 'sha256',
      pcr_values: Object.fromEntries(this.selection[0]!.pcrs.map((p) => [p, hex(bank.get(p)!)])),
    })
    let tmp: string | undefined
    try {
      tmp = await writeTempFile(this.dir, id, text)
      await link(tmp, this.pathOf(id)).catch((err: { code?: string }) => {
        if (err.code !== 'EEXIST') throw err // another start made it first: use that one
      })
    } finally {
      if (tmp) await rm(tmp, { force: true }).catch(() => undefined)
    }
    const k = await this.readKey(id)
    if (!k) throw sealError(`the TPM cache key ${id} vanished after it was written`)
    return k
  }

  private derive(k: PcrKey) {
    return async (salt: Uint8Array) => {
      const msg = Buffer.concat([Buffer.from(DOMAIN), salt])
      const digest = new Uint8Array(createHash('sha256').update(msg).digest())
      let sig: Uint8Array
      try {
        sig = await withTpm(this.tpm, async () => {
          for (let attempt = 0; ; attempt++) {
            try {
              await using key = await loadUnderSrk(this.tpm, k.blob)
              return await this.tpm.signWithPcrPolicy(key, digest, this.selection, k.pcrDigest)
            } catch (err) {
              // A TPM restart (reboot, swtpm restart): the next command reopens; one retry.
              if (attempt === 0 && isConnectionFailure(err)) continue
              throw err
            }
          }
        })
      } catch (err) {
        throw sealError('the TPM refused the PCR-bound cache key (PCRs changed, another TPM)', err)
      }
      const parsed = parseSignature(sig)
      if (parsed.sigAlg !== TPM_ALG.RSASSA) throw sealError('the TPM signed with another scheme')
      const pub = publicKeyObject(parseTpm2bPublic(k.blob.public))
      if (!verify('sha256', msg, pub, parsed.sig))
        throw sealError('the TPM signature does not verify')
      return new Uint8Array(
        await hkdfAsync('sha256', parsed.sig, salt, 'spiffe-edge cache kek v1 tpm-pcr', 32),
      )
    }
  }

  private static aad(k: PcrKey): Uint8Array {
    return createHash('sha256').update('tpm-pcr').update(k.blob.public).digest()
  }

  /** version(1) | id length(1) | key id | the wrapped DEK (sealer.ts). */
  async wrap(dek: Uint8Array): Promise<Uint8Array> {
    const k = await this.keyForNow()
    const inner = await wrapWith(dek, TpmPcrSealer.aad(k), this.derive(k))
    const id = Buffer.from(k.id)
    return new Uint8Array(Buffer.concat([Buffer.from([WRAP_VERSION, id.length]), id, inner]))
  }

  async unwrap(wrapped: Uint8Array): Promise<Uint8Array> {
    const b = Buffer.from(wrapped)
    const idLen = b[1] ?? 0
    const id = b.subarray(2, 2 + idLen).toString()
    if (b[0] !== WRAP_VERSION || !id.startsWith(PREFIX) || !/^[a-z0-9-]{1,64}$/.test(id))
      throw sealError('the wrapped cache key names no PCR-bound key')
    const k = await this.readKey(id)
    if (!k) throw sealError(`the TPM cache key ${id} is missing`)
    // Say which PCRs changed before asking the TPM (which would refuse anyway).
    const now = (await this.currentValues()).get(TPM_ALG.SHA256)
    const was = k.values.get(TPM_ALG.SHA256)!
    const changed = [...was].filter(([p, v]) => hex(now?.get(p) ?? new Uint8Array()) !== hex(v))
    if (changed.length > 0)
      throw mismatch(
        changed.map(([p]) => p),
        id,
      )
    return unwrapWith(b.subarray(2 + idLen), TpmPcrSealer.aad(k), this.derive(k))
  }
}
