/**
 * JWT-SVIDs: fetched per (SPIFFE ID, audience set), cached to half-life in a cache capped by count
 * (as SPIRE) and by bytes (audiences can be long), and served from cache while unexpired when the
 * server does not answer. One identity the server refuses does not cost a workload the others.
 */
import type { Log } from '../../common/log.js'
import type { AgentAuth, NodeClient } from '../../transport/node-client.js'
import type { EntryMessage } from '../../transport/proto.js'
import { GrpcStatus, WorkloadStatusError } from '../workload-api/errors.js'
import { audienceProblem, type JwtSvidResult } from '../workload-api/types.js'

/** A request's audiences checked, de-duplicated and sorted, and the cache key part they make. */
export interface Audience {
  readonly aud: readonly string[]
  readonly key: string
}

/**
 * Checked audiences per frozen request array. The endpoint hands every call of the same request
 * bytes the same frozen array (its parse cache), so the check, the Set, the sort and the join
 * ran again on identical input every call (~6 µs of a cached FetchJWTSVID in the profile). Only
 * frozen arrays are remembered: they cannot change, so a hit is exactly what the work would
 * give. Weak: an entry goes with its array.
 */
const checkedAudiences = new WeakMap<readonly string[], Audience>()

/** `audience` checked against JWT_AUDIENCE_LIMITS (INVALID_ARGUMENT), unique and sorted. */
export function checkAudience(audience: readonly string[]): Audience {
  const hit = checkedAudiences.get(audience)
  if (hit !== undefined) return hit
  const bad = audienceProblem(audience)
  if (bad !== undefined) throw new WorkloadStatusError(GrpcStatus.INVALID_ARGUMENT, bad)
  const aud = Object.freeze([...new Set(audience)].sort())
  // JSON, not a separator join: an audience may hold any character, NUL too.
  const a: Audience = Object.freeze({ aud, key: JSON.stringify(aud) })
  if (Object.isFrozen(audience)) checkedAudiences.set(audience, a)
  return a
}

interface CachedJwt {
  readonly token: string
  readonly issuedAt: number
  readonly expiresAt: number
  readonly hint: string
  readonly spiffeId: string
  /** What this cache slot costs: key and strings in UTF-8, plus a fixed overhead. */
  readonly bytes: number
}

/** Served from the cache until half its lifetime has passed (then fetched anew). */
const isFresh = (c: CachedJwt, now: number) => now < c.issuedAt + (c.expiresAt - c.issuedAt) / 2

const JWT_CACHE_MAX_ENTRIES = 1000
export const JWT_CACHE_DEFAULT_BYTES = 8 << 20
const JWT_CACHE_SLOT_OVERHEAD = 128

export interface JwtDeps {
  readonly client: NodeClient
  readonly auth: () => AgentAuth
  readonly log: Log
  readonly now: () => number
  readonly maxBytes: number
}

export class JwtSvidCache {
  private readonly d: JwtDeps
  private readonly cache = new Map<string, CachedJwt>()
  private bytes = 0

  constructor(d: JwtDeps) {
    this.d = d
  }

  /** JWT-SVIDs for `entries` (one per SPIFFE ID, already chosen), for checked audiences. */
  async fetch(entries: readonly EntryMessage[], audience: Audience): Promise<JwtSvidResult[]> {
    const fresh = this.allFresh(entries, audience.key)
    if (fresh) return fresh
    const results = await Promise.allSettled(entries.map((e) => this.jwtFor(e, audience)))
    const out: JwtSvidResult[] = []
    let firstError: unknown
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        out.push(r.value)
        return
      }
      firstError ??= r.reason
      this.d.log('warn', 'could not get a JWT-SVID for one identity; serving the others', {
        entry: entries[i]!.id,
        spiffe_id: entries[i]!.spiffeId,
        error: (r.reason as Error)?.message ?? String(r.reason),
      })
    })
    if (out.length === 0 && firstError !== undefined) throw firstError
    return out
  }

  /**
   * Every entry's token from the cache when all are before their half-life, else undefined. The
   * common call (a workload asking again for its cached token) then skips a promise per entry
   * and the settled-results walk.
   */
  private allFresh(entries: readonly EntryMessage[], audKey: string): JwtSvidResult[] | undefined {
    const now = this.d.now()
    const out: JwtSvidResult[] = []
    for (const e of entries) {
      const cached = this.cache.get(`${e.spiffeId}|${audKey}`)
      if (!cached || !isFresh(cached, now)) return undefined
      out.push({ spiffeId: cached.spiffeId, token: cached.token, hint: cached.hint })
    }
    return out
  }

  private async jwtFor(e: EntryMessage, audience: Audience): Promise<JwtSvidResult> {
    const key = `${e.spiffeId}|${audience.key}`
    const cached = this.cache.get(key)
    const now = this.d.now()
    if (cached && isFresh(cached, now)) {
      return { spiffeId: cached.spiffeId, token: cached.token, hint: cached.hint }
    }
    try {
      const r = await this.d.client.call(
        'NewJWTSVID',
        { entryId: e.id, audience: [...audience.aud] },
        this.d.auth(),
      )
      this.put(key, {
        token: r.token,
        issuedAt: r.issuedAt * 1000,
        expiresAt: r.expiresAt * 1000,
        hint: r.hint,
        spiffeId: r.spiffeId,
      })
      return { spiffeId: r.spiffeId, token: r.token, hint: r.hint }
    } catch (err) {
      // The server is unreachable: an unexpired cached token is still valid (SPIRE does this too).
      if (cached && now < cached.expiresAt) {
        this.d.log('warn', 'serving a cached JWT-SVID: the server did not answer', {
          spiffe_id: e.spiffeId,
        })
        return { spiffeId: cached.spiffeId, token: cached.token, hint: cached.hint }
      }
      throw err
    }
  }

  /** Inserts as the newest slot, then drops the oldest until both the count and bytes caps hold. */
  private put(key: string, v: Omit<CachedJwt, 'bytes'>): void {
    const max = this.d.maxBytes
    const bytes =
      JWT_CACHE_SLOT_OVERHEAD +
      Buffer.byteLength(key) +
      Buffer.byteLength(v.token) +
      Buffer.byteLength(v.spiffeId) +
      Buffer.byteLength(v.hint)
    this.drop(key)
    if (bytes > max) return // larger than the whole cache: served, not kept
    this.cache.set(key, { ...v, bytes })
    this.bytes += bytes
    while (this.cache.size > JWT_CACHE_MAX_ENTRIES || this.bytes > max) {
      this.drop(this.cache.keys().next().value!)
    }
  }

  private drop(key: string): void {
    const old = this.cache.get(key)
    if (!old) return
    this.cache.delete(key)
    this.bytes -= old.bytes
  }

  clear(): void {
    this.cache.clear()
    this.bytes = 0
  }

  stats(): { entries: number; bytes: number; maxBytes: number } {
    return { entries: this.cache.size, bytes: this.bytes, maxBytes: this.d.maxBytes }
  }
}
