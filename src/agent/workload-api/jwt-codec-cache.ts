/**
 * FetchJWTSVID's request parse and response encode, remembered by their exact inputs. A workload
 * asks for the same audience over and over and gets the same cached token back, yet each call
 * decoded the request strictly (a UTF-8 walk, protobufjs decode and toObject) and encoded the
 * response through protobufjs again: ~30 µs of a ~300 µs call in the profile.
 *
 * Both are pure functions of their keys (the request's bytes; the response's SPIFFE IDs, tokens
 * and hints), so a hit returns exactly what the work would have; nothing about the caller is
 * kept. Bounded by count and by key size; the oldest entry goes first.
 */

/** Most entries kept by each cache. */
export const JWT_CODEC_CACHE_MAX = 128
/**
 * Longest key remembered (a request, or a response's tokens); longer ones are just not kept.
 * With the count, this bounds each cache near 2 MiB at worst (key plus value); typical entries
 * are well under 2 KiB.
 */
export const JWT_CODEC_KEY_MAX_BYTES = 8 * 1024

export class CodecCache<V> {
  private readonly m = new Map<string, V>()

  /** `key` is any string that determines `make()`'s result completely. */
  get(key: string, make: () => V): V {
    const hit = this.m.get(key)
    if (hit !== undefined) return hit
    const v = make()
    if (key.length <= JWT_CODEC_KEY_MAX_BYTES) {
      this.m.set(key, v)
      if (this.m.size > JWT_CODEC_CACHE_MAX) this.m.delete(this.m.keys().next().value!)
    }
    return v
  }

  get size(): number {
    return this.m.size
  }
}

/** A byte string as a string key, one character per byte (no decoding: any bytes are fine). */
export function bytesKey(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1')
}

/**
 * One remembered input and its value, in front of a CodecCache: a workload sends the same
 * request and gets the same token call after call, and comparing with the last input (a byte
 * compare, or string identity) is cheaper than building and hashing the map's key each time
 * (~5 µs of a cached FetchJWTSVID in the profile). `same` must mean "make() would give the same
 * value"; a make() that throws leaves the remembered pair as it was.
 */
export class LastOne<K, V> {
  private readonly same: (a: K, b: K) => boolean
  private last: { readonly k: K; readonly v: V } | undefined

  constructor(same: (a: K, b: K) => boolean) {
    this.same = same
  }

  /** `keep` makes the copy of `k` to remember (inputs the caller may reuse must be copied). */
  get(k: K, make: () => V, keep: (k: K) => K = (x) => x): V {
    const l = this.last
    if (l !== undefined && this.same(l.k, k)) return l.v
    const v = make()
    this.last = { k: keep(k), v }
    return v
  }
}

/** Byte-for-byte equal. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0
}
