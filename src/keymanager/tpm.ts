/**
 * A KeyManager whose keys live in the TPM: each key is a non-exportable signing key (fixedTPM,
 * fixedParent, sensitiveDataOrigin) created under the SRK. Only its blob is stored
 * (`<dir>/<id>.tpmkey`, JSON of the SRK-wrapped private part and the public area, mode 0600): it
 * is useless outside this TPM. Signing hashes in software and signs the digest in the TPM.
 */
import { createHash } from 'node:crypto'
import { chmod, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { syncDirectory, writeTempFile } from '../common/temp-file.js'
import { TPM_ALG } from '../tpm/constants.js'
import {
  isConnectionFailure,
  type KeyBlob,
  type KeyHandle,
  type TpmContext,
  type TpmHealth,
} from '../tpm/context.js'
import { createSigningKey, openSrk } from '../tpm/keys.js'
import {
  keyAlgorithmLabel,
  parseTpm2bPublic,
  publicKeyObject,
  type TpmPublic,
} from '../tpm/structures/public.js'
import { ecdsaToP1363, parseSignature } from '../tpm/structures/signature.js'
import type { KeyAlgorithm } from '../tpm/templates.js'
import { type Key, type KeyManager, KeyManagerError, type KeyType, validateKeyId } from './types.js'

const SUFFIX = '.tpmkey'

// TPM key types this manager makes (the TPM templates are SHA-256 based).
const TPM_ALGORITHMS: Partial<Record<KeyType, KeyAlgorithm>> = {
  'ec-p256': 'ecc-p256',
  'rsa-2048': 'rsa-2048',
}

const locks = new WeakMap<TpmContext, Promise<unknown>>()

/**
 * Runs `fn` with the TPM to itself. TpmContext queues single commands, but a load-sign-flush
 * sequence must not interleave with another (swtpm has ~3 object slots and no resource manager):
 * every multi-command sequence on a shared context goes through here. Not re-entrant.
 */
export function withTpm<T>(tpm: TpmContext, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(tpm) ?? Promise.resolve()
  const next = prev.then(fn, fn)
  locks.set(
    tpm,
    next.catch(() => undefined),
  )
  return next
}

/** Loads a blob under a fresh SRK and flushes the SRK at once (one slot held afterwards). */
export async function loadUnderSrk(tpm: TpmContext, blob: KeyBlob): Promise<KeyHandle> {
  // `return await`: a rejection must be observed before the SRK's disposal is awaited.
  await using srk = await openSrk(tpm)
  return await tpm.loadKey(srk, blob)
}

/** A key inside the TPM. `blob` is safe to hand around: only this TPM can load it. */
export interface TpmKey extends Key {
  readonly blob: KeyBlob
  /** The marshaled TPM2B_PUBLIC (what the AK certifies and the attestor sends). */
  readonly tpmPublic: Uint8Array
}

function keyTypeOfPublic(pub: TpmPublic): KeyType | undefined {
  const label = keyAlgorithmLabel(pub)
  return label === 'ecc-p256' ? 'ec-p256' : label === 'rsa-2048' ? 'rsa-2048' : undefined
}

/** A signature in the Signer form: ECDSA as IEEE-P1363 r||s, RSA as PKCS#1 v1.5 bytes. */
function toSignerForm(marshaled: Uint8Array): Uint8Array {
  const sig = parseSignature(marshaled)
  if (sig.sigAlg === TPM_ALG.ECDSA) return ecdsaToP1363(sig, 32)
  if (sig.sigAlg !== TPM_ALG.RSASSA) {
    throw new KeyManagerError('the TPM signed with RSA-PSS', 'use an RSASSA signing key template')
  }
  return sig.sig
}

/** A Key for a blob: each sign() loads, signs and flushes, holding the TPM meanwhile. */
export function tpmKey(tpm: TpmContext, id: string, blob: KeyBlob): TpmKey {
  const pub = parseTpm2bPublic(blob.public)
  const keyType = keyTypeOfPublic(pub)
  if (keyType === undefined) {
    throw new KeyManagerError(
      `TPM key ${id} is ${keyAlgorithmLabel(pub)}`,
      'use ec-p256 or rsa-2048 TPM keys',
    )
  }
  return Object.freeze({
    id,
    keyType,
    publicKey: publicKeyObject(pub),
    blob,
    tpmPublic: blob.public,
    sign: (data: Uint8Array) =>
      withTpm(tpm, async () => {
        const digest = new Uint8Array(createHash('sha256').update(data).digest())
        for (let attempt = 0; ; attempt++) {
          try {
            // The TPM attestor may hold this key loaded (the CSR of an attestation): borrowed.
            await using k = tpm.borrowLoaded(blob) ?? (await loadUnderSrk(tpm, blob))
            return toSignerForm(await tpm.sign(k, digest))
          } catch (err) {
            // The TPM went away (swtpm restart, device reset): the next command reopens the
            // context and the key reloads from its blob, so one more try is enough.
            if (attempt === 0 && isConnectionFailure(err)) continue
            throw err
          }
        }
      }),
  })
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err
    ? String((err as { code: unknown }).code)
    : undefined
}

/** TPM-resident keys, blobs in `dir` (0700). */
export class TpmKeyManager implements KeyManager {
  readonly dir: string
  private readonly tpm: TpmContext
  /**
   * Takes over the SRK reference key generation used instead of flushing it (the TPM attestor
   * adopts it: attestation follows key generation, and a CreatePrimary costs milliseconds on
   * swtpm, far more on chips). The taker owns that reference and must dispose it.
   */
  handOffSrk: ((srk: KeyHandle) => void) | undefined

  constructor(tpm: TpmContext, dir: string) {
    this.tpm = tpm
    this.dir = dir
  }

  /** The TPM's state for the agent's health: unhealthy while the TPM is unreachable. */
  tpmHealth(): TpmHealth {
    return this.tpm.health()
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}${SUFFIX}`)
  }

  async generateKey(id: string, type: KeyType): Promise<TpmKey> {
    const { key, stored } = await this.generateKeyEarly(id, type)
    await stored
    return key
  }

  async generateKeyEarly(
    id: string,
    type: KeyType,
  ): Promise<{ key: TpmKey; stored: Promise<void> }> {
    validateKeyId(id)
    const alg = TPM_ALGORITHMS[type]
    if (alg === undefined) {
      throw new KeyManagerError(
        `the TPM key manager does not make ${type} keys`,
        'use ec-p256 or rsa-2048',
      )
    }
    // Beside the TPM work, not before it: the first TPM command goes out at once (the store
    // below waits for the directory, and reports its failure as the key's write failing).
    const dirReady = mkdir(this.dir, { recursive: true, mode: 0o700 })
    dirReady.catch(() => undefined)
    const made = await withTpm(this.tpm, async () => {
      const srk = await openSrk(this.tpm)
      let out: KeyBlob
      try {
        out = await createSigningKey(this.tpm, srk, alg)
      } catch (err) {
        await srk.dispose()
        throw err
      }
      const take = this.handOffSrk
      if (take) take(srk)
      else await srk.dispose()
      return out
    })
    // Plain Uint8Arrays (the addon returns Buffers): the same shape getKey() reads back.
    const blob: KeyBlob = {
      private: new Uint8Array(made.private),
      public: new Uint8Array(made.public),
    }
    const text = JSON.stringify({
      version: 1,
      key_type: type,
      private: Buffer.from(blob.private).toString('base64'),
      public: Buffer.from(blob.public).toString('base64'),
    })
    const stored = dirReady.then(
      () => this.store(id, text),
      (err: unknown) => {
        throw new KeyManagerError(
          `cannot create the key directory ${this.dir}`,
          'check the directory permissions and free space',
          err,
        )
      },
    )
    // Seen by whoever awaits it; a caller that failed first must not leave it unhandled.
    stored.catch(() => undefined)
    return { key: tpmKey(this.tpm, id, blob), stored }
  }

  /** Atomic replace: a crash never leaves a half-written blob under the real name. */
  private async store(id: string, text: string): Promise<void> {
    let tmp: string | undefined
    try {
      tmp = await writeTempFile(this.dir, id, text)
      await chmod(tmp, 0o600)
      await rename(tmp, this.pathOf(id))
      tmp = undefined
      // The name too: `stored` promises the agent can find the key after a crash.
      await syncDirectory(this.dir)
    } catch (err) {
      if (tmp) await rm(tmp, { force: true }).catch(() => {})
      throw new KeyManagerError(
        `cannot write TPM key ${id} to ${this.dir}`,
        'check the directory permissions and free space',
        err,
      )
    }
  }

  async getKey(id: string): Promise<TpmKey | undefined> {
    validateKeyId(id)
    let text: string
    try {
      text = await readFile(this.pathOf(id), 'utf8')
    } catch (err) {
      if (errCode(err) === 'ENOENT') return undefined
      throw new KeyManagerError(`cannot read TPM key ${id}`, 'check the file permissions', err)
    }
    try {
      const j = JSON.parse(text) as { version?: unknown; private?: unknown; public?: unknown }
      if (j.version !== 1 || typeof j.private !== 'string' || typeof j.public !== 'string') {
        throw new Error('not a version 1 TPM key file')
      }
      const blob: KeyBlob = {
        private: new Uint8Array(Buffer.from(j.private, 'base64')),
        public: new Uint8Array(Buffer.from(j.public, 'base64')),
      }
      return tpmKey(this.tpm, id, blob)
    } catch (err) {
      if (err instanceof KeyManagerError) throw err
      throw new KeyManagerError(
        `TPM key file ${this.pathOf(id)} is corrupt`,
        'delete it and generate the key again',
        err,
      )
    }
  }

  /** The marshaled TPM2B_PUBLIC of a key (for the TPM attestor's agent_key_public). */
  async tpmPublic(id: string): Promise<Uint8Array> {
    const k = await this.getKey(id)
    if (!k) throw new KeyManagerError(`no TPM key ${id}`, 'generate the key first')
    return k.tpmPublic
  }

  async listKeys(): Promise<TpmKey[]> {
    let names: string[]
    try {
      names = await readdir(this.dir)
    } catch (err) {
      if (errCode(err) === 'ENOENT') return []
      throw new KeyManagerError(`cannot list ${this.dir}`, 'check the directory permissions', err)
    }
    const out: TpmKey[] = []
    for (const n of names.sort()) {
      if (!n.endsWith(SUFFIX) || n.startsWith('.')) continue
      const k = await this.getKey(n.slice(0, -SUFFIX.length))
      if (k) out.push(k)
    }
    return out
  }

  async deleteKey(id: string): Promise<void> {
    validateKeyId(id)
    await rm(this.pathOf(id), { force: true })
  }
}
