/**
 * The trust domain's CA: X.509 CA keys and JWT signing keys, each with a current and a prepared
 * next slot, as SPIRE keeps them. A next key is prepared at half the current one's life and goes
 * into the published bundle at once; it starts signing only at 5/6 of the current one's life, so
 * every agent has had time to fetch a bundle that trusts it. Retired keys stay in the bundle until
 * they expire (SVIDs they signed are still in use). Every bundle change increments
 * spiffe_sequence. The journal (which key is where) is stored in the datastore; keys live in the key
 * manager (disk 0600 by default, or hardware).
 */
import { type KeyObject, randomBytes } from 'node:crypto'
import { x509 } from '../common/x509.js'
import { SpiffeEdgeError } from '../errors.js'
import { type KeyManager, KeyManagerError, type KeyType, type Signer } from '../keymanager/types.js'
import { TrustBundle } from '../spiffe/bundle.js'
import type { SpiffeId, TrustDomain } from '../spiffe/id.js'
import { issueX509Ca, issueX509Svids } from '../spiffe/x509-svid.js'
import {
  ACTIVATE_AT,
  der,
  fraction,
  JOURNAL,
  type Journal,
  type JwtSlot,
  PREPARE_AT,
  randomSerialBytes,
  type X509Slot,
} from './ca-journal.js'
import type { Datastore } from './datastore/types.js'

export interface Clock {
  now(): Date
}

export interface UpstreamAuthority {
  /** The upstream CA certificate (DER) our intermediate is issued by. */
  readonly certificate: Uint8Array
  readonly signer: Signer
  /** Roots to publish (DER): the bundle then holds these instead of our own CA certificates. */
  readonly roots: readonly Uint8Array[]
  /** Certificates between the upstream CA and its roots, sent along with SVID chains. */
  readonly chain: readonly Uint8Array[]
}

export interface CaOptions {
  readonly trustDomain: TrustDomain
  readonly keyManager: KeyManager
  readonly datastore: Datastore
  readonly keyType: KeyType
  readonly caTtlSeconds: number
  readonly clock: Clock
  readonly upstream?: UpstreamAuthority | undefined
  readonly log?:
    | ((level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void)
    | undefined
}

/** One X509-SVID to sign: the key from the CSR, the ID and lifetime from its entry. */
export interface SvidRequest {
  publicKey: KeyObject
  spiffeId: SpiffeId
  ttlSeconds: number
  dnsNames?: readonly string[]
}

export interface IssuedX509 {
  /** DER, leaf first, then our CA when it is an intermediate under an upstream. */
  readonly chain: Uint8Array[]
  readonly notAfter: Date
  readonly serial: string
}

export class CaManager {
  private journal: Journal
  private bundleCache: TrustBundle | undefined
  private activeDer: { b64: string; der: Uint8Array } | undefined
  private readonly o: CaOptions

  private constructor(o: CaOptions, journal: Journal) {
    this.o = o
    this.journal = journal
  }

  static async open(o: CaOptions): Promise<CaManager> {
    const raw = await o.datastore.getJournal(JOURNAL)
    const journal: Journal = raw
      ? (JSON.parse(raw) as Journal)
      : { x509: { retired: [] }, jwt: { retired: [] }, counter: 0 }
    const ca = new CaManager(o, journal)
    await ca.checkKeysPresent()
    await ca.rotate()
    return ca
  }

  /**
   * Every key the journal names must still be in the key manager: a journal whose keys were lost
   * (a key directory deleted or not restored) cannot sign, and replacing the keys silently would
   * change the trust root under every agent.
   */
  private async checkKeysPresent(): Promise<void> {
    const missing: string[] = []
    for (const j of [this.journal.x509, this.journal.jwt]) {
      for (const slot of [j.current, j.next, ...j.retired]) {
        if (slot && !(await this.o.keyManager.getKey(slot.keyId))) missing.push(slot.keyId)
      }
    }
    if (missing.length === 0) return
    throw new SpiffeEdgeError(
      'ERR_KEY_MANAGER',
      `the datastore names CA keys the key manager does not hold: ${missing.join(', ')}`,
      {
        remedy:
          'restore the key directory from the backup that matches the datastore; or, to start a new CA on purpose, run `server run --reset` (moves the datastore and keys aside)',
      },
    )
  }

  private nowMs(): number {
    return this.o.clock.now().getTime()
  }

  private async newX509Slot(): Promise<X509Slot> {
    const keyId = `x509-ca-${++this.journal.counter}`
    const key = await this.o.keyManager.generateKey(keyId, this.o.keyType)
    const notBefore = this.nowMs() - 60_000 // tolerate small clock skew on relying parties
    let notAfter = this.nowMs() + this.o.caTtlSeconds * 1000
    const up = this.o.upstream
    if (up) {
      const upNotAfter = new x509.X509Certificate(up.certificate).notAfter.getTime()
      notAfter = Math.min(notAfter, upNotAfter)
    }
    const certificate = await issueX509Ca({
      subjectPublicKey: key.publicKey,
      trustDomain: this.o.trustDomain,
      ...(up
        ? { issuer: { certificate: up.certificate, signer: up.signer } }
        : { selfSigner: key }),
      notBefore: new Date(notBefore),
      notAfter: new Date(notAfter),
      subject: `CN=${this.o.trustDomain.name} CA ${this.journal.counter},O=spiffe-edge`,
    })
    this.o.log?.('info', 'prepared X.509 CA', { keyId, notAfter: new Date(notAfter).toISOString() })
    return {
      keyId,
      certificate: Buffer.from(certificate).toString('base64'),
      notBefore,
      notAfter,
      issuedAt: this.nowMs(),
    }
  }

  private async newJwtSlot(): Promise<JwtSlot> {
    const keyId = `jwt-${++this.journal.counter}`
    await this.o.keyManager.generateKey(keyId, this.o.keyType)
    const notBefore = this.nowMs()
    const notAfter = notBefore + this.o.caTtlSeconds * 1000
    this.o.log?.('info', 'prepared JWT key', { keyId })
    return { keyId, kid: randomBytes(24).toString('base64url'), notBefore, notAfter }
  }

  /**
   * Moves the slots along: creates what is missing, prepares a next key past half life, activates
   * it past 5/6, drops expired retired keys, and republishes the bundle if anything changed.
   * Call it at start and then periodically (every few seconds).
   */
  async rotate(): Promise<boolean> {
    const now = this.nowMs()
    let changed = false
    for (const kind of ['x509', 'jwt'] as const) {
      const j = this.journal[kind] as {
        current?: X509Slot | JwtSlot
        next?: X509Slot | JwtSlot
        retired: (X509Slot | JwtSlot)[]
      }
      if (!j.current || j.current.notAfter <= now) {
        if (j.current) j.retired.push(j.current)
        j.current =
          j.next && j.next.notAfter > now
            ? j.next
            : kind === 'x509'
              ? await this.newX509Slot()
              : await this.newJwtSlot()
        delete j.next
        changed = true
      }
      if (!j.next && fraction(j.current, now) >= PREPARE_AT) {
        j.next = kind === 'x509' ? await this.newX509Slot() : await this.newJwtSlot()
        changed = true
      }
      if (j.next && fraction(j.current, now) >= ACTIVATE_AT) {
        j.retired.push(j.current)
        j.current = j.next
        delete j.next
        changed = true
        this.o.log?.('info', `activated the next ${kind === 'x509' ? 'X.509 CA' : 'JWT key'}`, {
          keyId: j.current.keyId,
        })
      }
      const live = j.retired.filter((s) => s.notAfter > now)
      for (const dead of j.retired.filter((s) => s.notAfter <= now)) {
        await this.o.keyManager.deleteKey(dead.keyId)
        changed = true
      }
      j.retired = live
    }
    if (changed) {
      await this.o.datastore.setJournal(JOURNAL, JSON.stringify(this.journal))
      await this.publishBundle()
    } else if (!this.bundleCache) {
      await this.publishBundle()
    }
    return changed
  }

  private async buildBundle(sequence: number): Promise<TrustBundle> {
    const x = this.journal.x509
    const slots = [x.current, x.next, ...x.retired].filter((s): s is X509Slot => s !== undefined)
    const jwt = this.journal.jwt
    const jwtSlots = [jwt.current, jwt.next, ...jwt.retired].filter(
      (s): s is JwtSlot => s !== undefined,
    )
    const jwtAuthorities = new Map()
    for (const s of jwtSlots) {
      const key = await this.o.keyManager.getKey(s.keyId)
      if (key) jwtAuthorities.set(s.kid, key.publicKey)
    }
    return new TrustBundle({
      trustDomain: this.o.trustDomain,
      x509Authorities: this.o.upstream
        ? [...this.o.upstream.roots]
        : slots.map((s) => der(s.certificate)),
      jwtAuthorities,
      sequence,
      refreshHintSeconds: Math.max(60, Math.floor(this.o.caTtlSeconds / 10)),
    })
  }

  /** Publishes the bundle (sequence + 1) when its content differs from the stored one. */
  private async publishBundle(): Promise<void> {
    const td = this.o.trustDomain.name
    const stored = await this.o.datastore.getBundle(td)
    const candidate = await this.buildBundle(stored?.sequence ?? 0)
    if (stored) {
      const prev = TrustBundle.fromSpiffeJson(this.o.trustDomain, stored.json)
      if (prev.equals(candidate)) {
        this.bundleCache = prev
        return
      }
    }
    const next = await this.buildBundle((stored?.sequence ?? 0) + 1)
    await this.o.datastore.setBundle(td, next.toSpiffeJson(), next.sequence)
    this.bundleCache = next
    this.o.log?.('info', 'published trust bundle', { sequence: next.sequence })
  }

  bundle(): TrustBundle {
    if (!this.bundleCache)
      throw new SpiffeEdgeError('ERR_INTERNAL_STATE', 'CaManager.rotate() has not run', {
        remedy: 'this is a bug in spiffe-edge; please report it with the log',
      })
    return this.bundleCache
  }

  private async activeX509(): Promise<{
    certificate: Uint8Array
    signer: Signer
    notAfter: number
  }> {
    const slot = this.journal.x509.current!
    const signer = await this.slotKey('CA', slot.keyId)
    // Decoded once per slot certificate (this runs for every SVID signed); a fresh copy per
    // change of slot, and the string it came from is compared on every call.
    if (this.activeDer?.b64 !== slot.certificate)
      this.activeDer = { b64: slot.certificate, der: der(slot.certificate) }
    return { certificate: this.activeDer.der, signer, notAfter: slot.notAfter }
  }

  /** A slot's key; one the journal names but the key manager lacks is never silently replaced. */
  private async slotKey(kind: 'CA' | 'JWT', keyId: string): Promise<Signer> {
    const signer = await this.o.keyManager.getKey(keyId)
    if (!signer) {
      throw new KeyManagerError(
        `${kind} key ${keyId} is missing from the key manager`,
        'restore the keys directory from backup, or start over with server run --reset',
      )
    }
    return signer
  }

  /** The current JWT signing key and its kid. */
  async activeJwt(): Promise<{ kid: string; signer: Signer }> {
    const slot = this.journal.jwt.current!
    const signer = await this.slotKey('JWT', slot.keyId)
    return { kid: slot.kid, signer }
  }

  /** Signs an X509-SVID for a public key; the lifetime is clamped to the CA's. */
  async signX509Svid(params: SvidRequest): Promise<IssuedX509> {
    const [one] = await this.signX509Svids([params])
    if (!one || one instanceof Error) throw one ?? new Error('no SVID issued')
    return one
  }

  /**
   * signX509Svid for several keys with one call into the CA key (signMany where the key has it:
   * one hop to the token for the lot). A request that cannot be issued is its own Error; a
   * failed CA signature rejects them all.
   */
  async signX509Svids(list: readonly SvidRequest[]): Promise<(IssuedX509 | Error)[]> {
    const ca = await this.activeX509()
    const now = this.nowMs()
    const meta = list.map((p) => ({
      notAfter: Math.min(now + p.ttlSeconds * 1000, ca.notAfter),
      serial: BigInt(`0x${randomSerialBytes().toString('hex')}`) >> 1n,
    }))
    const leaves = await issueX509Svids(
      { certificate: ca.certificate, signer: ca.signer },
      list.map((p, i) => ({
        subjectPublicKey: p.publicKey,
        spiffeId: p.spiffeId,
        ...(p.dnsNames ? { dnsNames: p.dnsNames } : {}),
        notBefore: new Date(now - 10_000),
        notAfter: new Date(meta[i]!.notAfter),
        serial: meta[i]!.serial,
      })),
    )
    return leaves.map((leaf: Uint8Array | Error, i: number) => {
      if (leaf instanceof Error) return leaf
      const chain = [leaf]
      if (this.o.upstream) chain.push(ca.certificate, ...this.o.upstream.chain)
      const m = meta[i]!
      return { chain, notAfter: new Date(m.notAfter), serial: m.serial.toString(16) }
    })
  }

  /** The CA certificates (DER) still valid, current first: what the bundle publishes. */
  caCertificates(): Uint8Array[] {
    const x = this.journal.x509
    return [x.current, x.next, ...x.retired]
      .filter((s): s is X509Slot => s !== undefined)
      .map((s) => der(s.certificate))
  }

  /** Diagnostics and tests: which keys sit in which slot. */
  slots(): {
    x509: { current?: string; next?: string; retired: string[] }
    jwt: { current?: string; next?: string; retired: string[] }
  } {
    const name = (s?: { keyId: string }) => s?.keyId
    const view = (j: {
      current?: { keyId: string }
      next?: { keyId: string }
      retired: { keyId: string }[]
    }) => {
      const out: { current?: string; next?: string; retired: string[] } = {
        retired: j.retired.map((s) => s.keyId),
      }
      const c = name(j.current)
      const n = name(j.next)
      if (c) out.current = c
      if (n) out.next = n
      return out
    }
    return { x509: view(this.journal.x509), jwt: view(this.journal.jwt) }
  }
}
