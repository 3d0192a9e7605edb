/**
 * A real, in-memory WorkloadSource for Workload API tests: a self-signed CA and a JWT signing key
 * per trust domain, X509-SVIDs issued per registration entry, entries matched by selector subset,
 * updates pushed to every subscriber on each change (as the agent cache will do).
 */
import type { KeyObject } from 'node:crypto'
import type {
  BundlesUpdate,
  JwtSvidResult,
  Selector,
  WorkloadSource,
  WorkloadX509Svid,
  X509Update,
} from '../../src/agent/workload-api/types.js'
import { generateSoftwareKeyPair, MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key } from '../../src/keymanager/types.js'
import { JwtBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { mintJwtSvid } from '../../src/spiffe/jwt-svid.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'

export interface TestEntry {
  readonly id: string
  readonly spiffeId: string
  readonly selectors: readonly Selector[]
  readonly hint?: string
  readonly federatesWith?: readonly string[]
}

interface Authority {
  readonly td: TrustDomain
  readonly caDer: Uint8Array
  readonly caKey: Key
  readonly jwtKey: Key
  readonly kid: string
}

interface Issued {
  readonly entry: TestEntry
  readonly svid: WorkloadX509Svid
}

/** 'unix:uid:0' → { type: 'unix', value: 'uid:0' } */
export function sel(s: string): Selector {
  const i = s.indexOf(':')
  return { type: s.slice(0, i), value: s.slice(i + 1) }
}

const key = (s: Selector) => `${s.type}:${s.value}`

function publicJwk(k: KeyObject, kid: string): Record<string, unknown> {
  const j = k.export({ format: 'jwk' })
  return { kty: j.kty, crv: j.crv, x: j.x, y: j.y, kid }
}

export class MemoryWorkloadSource implements WorkloadSource {
  readonly trustDomain: TrustDomain
  private readonly authorities = new Map<string, Authority>()
  private readonly entries = new Map<string, Issued>()
  private readonly x509Subs = new Set<{ selectors: Set<string>; cb: (u: X509Update) => void }>()
  private readonly bundleSubs = new Set<(u: BundlesUpdate) => void>()
  private readonly km = new MemoryKeyManager()
  /** JWT-SVIDs minted so far (tests check the source is asked, not the network). */
  jwtMinted = 0

  private constructor(td: TrustDomain) {
    this.trustDomain = td
  }

  static async create(
    trustDomain = 'example.org',
    federated: readonly string[] = ['federated.test'],
  ): Promise<MemoryWorkloadSource> {
    const s = new MemoryWorkloadSource(TrustDomain.parse(trustDomain))
    for (const td of [trustDomain, ...federated]) await s.addTrustDomain(td)
    return s
  }

  async addTrustDomain(name: string): Promise<void> {
    const td = TrustDomain.parse(name)
    const safe = name.replace(/[^A-Za-z0-9._-]/g, '_')
    const caKey = await this.km.generateKey(`ca-${safe}`, 'ec-p256')
    const jwtKey = await this.km.generateKey(`jwt-${safe}`, 'ec-p256')
    const now = Date.now()
    const caDer = await issueX509Ca({
      subjectPublicKey: caKey.publicKey,
      trustDomain: td,
      selfSigner: caKey,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 24 * 3600_000),
    })
    this.authorities.set(name, { td, caDer, caKey, jwtKey, kid: `kid-${safe}` })
    this.pushBundles()
  }

  caOf(td: string): Uint8Array {
    const a = this.authorities.get(td)
    if (!a) throw new Error(`no trust domain ${td}`)
    return a.caDer
  }

  async addEntry(e: TestEntry): Promise<WorkloadX509Svid> {
    const id = SpiffeId.parse(e.spiffeId)
    const a = this.authorities.get(id.trustDomain.name)
    if (!a) throw new Error(`no CA for ${id.trustDomain.name}`)
    const { privateKey, publicKey } = await generateSoftwareKeyPair('ec-p256')
    const now = Date.now()
    const leaf = await issueX509Svid({
      subjectPublicKey: publicKey,
      spiffeId: id,
      issuer: { certificate: a.caDer, signer: a.caKey },
      notBefore: new Date(now - 10_000),
      notAfter: new Date(now + 3600_000),
    })
    const svid: WorkloadX509Svid = {
      spiffeId: id.toString(),
      chain: [leaf],
      privateKey: new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' })),
      hint: e.hint ?? '',
      entryId: e.id,
    }
    this.entries.set(e.id, { entry: e, svid })
    this.pushX509()
    return svid
  }

  removeEntry(id: string): void {
    this.entries.delete(id)
    this.pushX509()
  }

  get subscribers(): number {
    return this.x509Subs.size + this.bundleSubs.size
  }

  private matching(selectors: Set<string>): Issued[] {
    return [...this.entries.values()]
      .filter((i) => i.entry.selectors.every((s) => selectors.has(key(s))))
      .sort((a, b) => (a.entry.id < b.entry.id ? -1 : a.entry.id > b.entry.id ? 1 : 0))
  }

  private x509For(selectors: Set<string>): X509Update {
    const issued = this.matching(selectors)
    const bundles = new Map<string, Uint8Array[]>()
    for (const i of issued) {
      const tds = [
        SpiffeId.parse(i.svid.spiffeId).trustDomain.name,
        ...(i.entry.federatesWith ?? []),
      ]
      for (const td of tds) {
        const a = this.authorities.get(td)
        if (a) bundles.set(td, [a.caDer])
      }
    }
    return { svids: issued.map((i) => i.svid), bundles }
  }

  private bundles(): BundlesUpdate {
    const x509 = new Map<string, Uint8Array[]>()
    const jwt = new Map<string, string>()
    for (const [td, a] of this.authorities) {
      x509.set(td, [a.caDer])
      jwt.set(td, JSON.stringify({ keys: [publicJwk(a.jwtKey.publicKey, a.kid)] }))
    }
    return { x509, jwt }
  }

  private pushX509(): void {
    for (const s of [...this.x509Subs]) s.cb(this.x509For(s.selectors))
  }

  private pushBundles(): void {
    const u = this.bundles()
    for (const cb of [...this.bundleSubs]) cb(u)
  }

  subscribeX509(selectors: readonly Selector[], onUpdate: (u: X509Update) => void): () => void {
    const sub = { selectors: new Set(selectors.map(key)), cb: onUpdate }
    this.x509Subs.add(sub)
    onUpdate(this.x509For(sub.selectors))
    return () => {
      this.x509Subs.delete(sub)
    }
  }

  subscribeBundles(onUpdate: (u: BundlesUpdate) => void): () => void {
    this.bundleSubs.add(onUpdate)
    onUpdate(this.bundles())
    return () => {
      this.bundleSubs.delete(onUpdate)
    }
  }

  async fetchJwtSvids(
    selectors: readonly Selector[],
    audience: readonly string[],
    spiffeId?: string,
  ): Promise<JwtSvidResult[]> {
    const issued = this.matching(new Set(selectors.map(key))).filter(
      (i) => spiffeId === undefined || i.svid.spiffeId === spiffeId,
    )
    const now = Date.now()
    const out: JwtSvidResult[] = []
    for (const i of issued) {
      const id = SpiffeId.parse(i.svid.spiffeId)
      const a = this.authorities.get(id.trustDomain.name)!
      out.push({
        spiffeId: i.svid.spiffeId,
        hint: i.svid.hint,
        token: await mintJwtSvid({
          spiffeId: id,
          audience,
          signer: a.jwtKey,
          kid: a.kid,
          issuedAt: new Date(now),
          expiresAt: new Date(now + 300_000),
        }),
      })
      this.jwtMinted++
    }
    return out
  }

  jwtBundle(td: TrustDomain): JwtBundle | undefined {
    const a = this.authorities.get(td.name)
    if (!a) return undefined
    return new JwtBundle(td, new Map([[a.kid, a.jwtKey.publicKey]]))
  }

  /** Mints a token for any ID of a known trust domain, bypassing entries (validation tests). */
  async mint(spiffeId: string, audience: readonly string[]): Promise<string> {
    const id = SpiffeId.parse(spiffeId)
    const a = this.authorities.get(id.trustDomain.name)!
    const now = Date.now()
    return mintJwtSvid({
      spiffeId: id,
      audience,
      signer: a.jwtKey,
      kid: a.kid,
      issuedAt: new Date(now),
      expiresAt: new Date(now + 300_000),
      extraClaims: { iss: 'test' },
    })
  }
}
