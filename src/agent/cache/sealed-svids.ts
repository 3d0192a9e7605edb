/**
 * The sealed SVID cache: workload X509-SVIDs and their private keys in `<data_dir>/svid-cache.json`
 * so a restart (a reboot with the server down) serves them at once. Each record is AES-256-GCM
 * under a data-encryption key (DEK) that a CacheSealer wraps (the TPM, or a 0600 key file); its
 * AAD names the agent, the entry and the SPIFFE ID, so a record moved to another slot or another
 * agent does not open. At load every record must decrypt, its chain must validate against the
 * saved bundle, and its key must match its leaf; anything else means tampering or another machine,
 * and the whole cache is discarded (logged) and rewritten from what the server issues next.
 * Expired records, or ones whose entry changed, are simply not restored. Sizes are capped.
 */
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  randomBytes,
} from 'node:crypto'
import { open, readFile, rename, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { Log } from '../../common/log.js'
import { writeTempFile } from '../../common/temp-file.js'
import { type CacheSealer, DEK_BYTES } from '../../keymanager/sealer.js'
import type { TrustBundle } from '../../spiffe/bundle.js'
import type { TrustDomain } from '../../spiffe/id.js'
import { readCert } from '../../spiffe/x509-cert.js'
import { validateX509Svid } from '../../spiffe/x509-svid-validate.js'

export const CACHE_FILE = 'svid-cache.json'
/** Bounds: 1000 SVIDs with RSA-4096 keys are ~8 MiB; more than this is not a cache we wrote. */
export const MAX_CACHE_FILE_BYTES = 32 << 20
export const MAX_CACHE_RECORDS = 20_000
const MAX_RECORD_BYTES = 64 << 10
const VERSION = 1

export interface PersistedSvid {
  readonly entryId: string
  readonly spiffeId: string
  readonly chain: readonly Uint8Array[]
  /** PKCS#8 DER. */
  readonly privateKey: Uint8Array
  readonly hint: string
  readonly entryRevision: number
}

interface FileRecord {
  e: string
  s: string
  n: string
  c: string
}
interface CacheFile {
  v: number
  sealer: string
  agent: string
  dek: string
  records: FileRecord[]
}
interface Plain {
  chain: string[]
  key: string
  hint: string
  rev: number
}

const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
const unb64 = (s: unknown, what: string): Buffer => {
  if (typeof s !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(s))
    throw new Error(`${what} is not base64`)
  return Buffer.from(s, 'base64')
}
const aad = (agent: string, entryId: string, spiffeId: string) =>
  Buffer.from(`spiffe-edge svid cache v1\n${agent}\n${entryId}\n${spiffeId}`)

export interface SealedStoreOptions {
  readonly dataDir: string
  readonly sealer: CacheSealer
  readonly trustDomain: TrustDomain
  readonly log: Log
}

export class SealedSvidStore {
  readonly path: string
  private readonly o: SealedStoreOptions
  private dek: Uint8Array | undefined
  private wrapped: Promise<Uint8Array> | undefined
  private file: CacheFile | undefined
  private writing: Promise<void> = Promise.resolve()
  private next: { agent: string; svids: readonly PersistedSvid[] } | undefined

  private constructor(o: SealedStoreOptions) {
    this.o = o
    this.path = join(o.dataDir, CACHE_FILE)
  }

  /**
   * Reads the cache and unwraps its DEK (one sealer call). A cache that does not open is
   * discarded with a log line and a new DEK is made (wrapped at the first save), so opening
   * never waits on more than one unwrap.
   */
  static async open(o: SealedStoreOptions): Promise<SealedSvidStore> {
    const s = new SealedSvidStore(o)
    if (o.sealer.warning) o.log('warn', o.sealer.warning, { sealer: o.sealer.kind })
    try {
      const f = await s.readFile()
      if (f) {
        s.dek = await o.sealer.unwrap(unb64(f.dek, 'dek'))
        if (s.dek.length !== DEK_BYTES) throw new Error('the cache key has the wrong size')
        s.wrapped = Promise.resolve(unb64(f.dek, 'dek'))
        s.file = f
      }
    } catch (err) {
      await s.discard(err)
    }
    if (!s.dek) s.freshKey()
    return s
  }

  /**
   * A new DEK; it is wrapped at the first save, not now: a TPM may need seconds to make its key
   * the first time, and attestation must not queue behind that.
   */
  private freshKey(): void {
    this.dek = new Uint8Array(randomBytes(DEK_BYTES))
    this.wrapped = undefined
  }

  private async readFile(): Promise<CacheFile | undefined> {
    let text: string
    try {
      const fh = await open(this.path, 'r')
      try {
        const st = await fh.stat()
        if (st.size > MAX_CACHE_FILE_BYTES)
          throw new Error(`larger than ${MAX_CACHE_FILE_BYTES} bytes`)
        text = await fh.readFile('utf8')
      } finally {
        await fh.close()
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return undefined
      throw err
    }
    const f = JSON.parse(text) as CacheFile
    if (
      typeof f !== 'object' ||
      f === null ||
      f.v !== VERSION ||
      typeof f.agent !== 'string' ||
      !Array.isArray(f.records) ||
      f.records.length > MAX_CACHE_RECORDS
    ) {
      throw new Error('not a version 1 SVID cache')
    }
    if (f.sealer !== this.o.sealer.kind) {
      throw new Error(
        `sealed by "${String(f.sealer)}", this agent seals with "${this.o.sealer.kind}"`,
      )
    }
    return f
  }

  /** Removes a cache that failed to open or verify and says why; the agent refetches. */
  private async discard(err: unknown): Promise<void> {
    this.file = undefined
    this.dek = undefined
    await rm(this.path, { force: true }).catch(() => undefined)
    this.o.log(
      'warn',
      'the sealed SVID cache could not be opened or verified; discarded, fetching SVIDs again',
      {
        code: (err as { code?: string }).code ?? 'ERR_CACHE_SEAL',
        path: this.path,
        error: (err as Error).message,
      },
    )
  }

  /**
   * The records still usable for `agent` at `now`, verified: decrypted, chain valid against
   * `bundle`, key matching the leaf. Records of another agent identity are dropped; a record
   * that fails decryption or verification discards the whole cache.
   */
  async load(
    agent: string,
    bundle: TrustBundle | undefined,
    now: number,
  ): Promise<PersistedSvid[]> {
    const f = this.file
    this.file = undefined // read once
    if (!f || !this.dek || f.agent !== agent || !bundle) return []
    const x509b = bundle.x509Bundle()
    const out: PersistedSvid[] = []
    try {
      for (const r of f.records) {
        if (typeof r.e !== 'string' || typeof r.s !== 'string') throw new Error('bad record')
        const iv = unb64(r.n, 'iv')
        const ct = unb64(r.c, 'record')
        if (iv.length !== 12 || ct.length < 16 || ct.length > MAX_RECORD_BYTES)
          throw new Error('bad record size')
        const d = createDecipheriv('aes-256-gcm', this.dek, iv)
        d.setAAD(aad(agent, r.e, r.s))
        d.setAuthTag(ct.subarray(ct.length - 16))
        const plain = JSON.parse(
          Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString('utf8'),
        ) as Plain
        const chain = plain.chain.map((c, i) => new Uint8Array(unb64(c, `chain ${i}`)))
        const leaf = readCert(chain[0]!)
        if (leaf.notAfter.getTime() <= now) continue // expired: nothing to serve
        const v = validateX509Svid(
          chain,
          (td) => (td.equals(this.o.trustDomain) ? x509b : undefined),
          new Date(now),
        )
        if (v.spiffeId.toString() !== r.s)
          throw new Error(`record ${r.e}: the leaf names another SPIFFE ID`)
        const key = createPrivateKey({ key: unb64(plain.key, 'key'), format: 'der', type: 'pkcs8' })
        const spki = (k: ReturnType<typeof createPublicKey>) =>
          k.export({ type: 'spki', format: 'der' })
        const leafKey = createPublicKey({
          key: Buffer.from(leaf.spki),
          format: 'der',
          type: 'spki',
        })
        if (!spki(createPublicKey(key)).equals(spki(leafKey))) {
          throw new Error(`record ${r.e}: the key does not match its certificate`)
        }
        if (!Number.isSafeInteger(plain.rev) || typeof plain.hint !== 'string')
          throw new Error('bad record fields')
        out.push({
          entryId: r.e,
          spiffeId: r.s,
          chain,
          privateKey: new Uint8Array(unb64(plain.key, 'key')),
          hint: plain.hint,
          entryRevision: plain.rev,
        })
      }
    } catch (err) {
      await this.discard(err)
      this.freshKey()
      return []
    }
    return out
  }

  /** Replaces the cache with `svids` (coalesced: only the newest pending snapshot is written). */
  save(agent: string, svids: readonly PersistedSvid[]): Promise<void> {
    this.next = { agent, svids }
    this.writing = this.writing
      .then(() => this.flush())
      .catch((err: unknown) => {
        this.o.log('warn', 'could not write the sealed SVID cache; a restart will refetch', {
          error: (err as Error).message,
          path: this.path,
        })
      })
    return this.writing
  }

  private async flush(): Promise<void> {
    const job = this.next
    if (!job) return
    this.next = undefined
    if (!this.dek) this.freshKey()
    const dek = this.dek!
    this.wrapped ??= this.o.sealer.wrap(dek)
    let wrapped: Uint8Array
    try {
      wrapped = await this.wrapped
    } catch (err) {
      this.wrapped = undefined // the next save tries again
      throw err
    }
    const records: FileRecord[] = []
    for (const s of job.svids.slice(0, MAX_CACHE_RECORDS)) {
      const plain: Plain = {
        chain: s.chain.map(b64),
        key: b64(s.privateKey),
        hint: s.hint,
        rev: s.entryRevision,
      }
      const iv = randomBytes(12)
      const c = createCipheriv('aes-256-gcm', dek, iv)
      c.setAAD(aad(job.agent, s.entryId, s.spiffeId))
      const ct = Buffer.concat([c.update(JSON.stringify(plain)), c.final(), c.getAuthTag()])
      if (ct.length > MAX_RECORD_BYTES) continue
      records.push({ e: s.entryId, s: s.spiffeId, n: b64(iv), c: b64(ct) })
    }
    const body: CacheFile = {
      v: VERSION,
      sealer: this.o.sealer.kind,
      agent: job.agent,
      dek: b64(wrapped),
      records,
    }
    const text = JSON.stringify(body)
    if (Buffer.byteLength(text) > MAX_CACHE_FILE_BYTES)
      throw new Error('the cache would exceed its size cap')
    // Atomic: a crash leaves the old cache or the new one, never half of one.
    let tmp: string | undefined
    try {
      tmp = await writeTempFile(dirname(this.path), CACHE_FILE, text)
      await rename(tmp, this.path)
    } catch (err) {
      if (tmp) await rm(tmp, { force: true }).catch(() => undefined)
      throw err
    }
  }

  /** Waits for pending writes (tests, shutdown). */
  async flushed(): Promise<void> {
    await this.writing
  }
}

/** For tests: the raw file, to corrupt or copy. */
export async function readCacheFile(dataDir: string): Promise<string> {
  return readFile(join(dataDir, CACHE_FILE), 'utf8')
}
