/**
 * Encoded X509SVIDResponse bytes per SVID set. Every caller of the same identity (and every
 * watcher on a rotation) gets the same message, so composing and protobuf-encoding it per call
 * (concatenating chains and bundles, parsing SPIFFE IDs, encoding ~1 KiB) repeated identical
 * work: the profile showed it, and a rotation fan-out to 1,000 watchers did it 1,000 times.
 *
 * Keyed by object identity, not content: the agent's cache makes a new WorkloadX509Svid for each
 * issued SVID and a new authority list for each bundle, and mutates neither's bytes afterwards.
 * A different object is simply a miss (encoded again), so the cache can never serve bytes for
 * an SVID set other than the one asked for. Entries hang off the first SVID object in a WeakMap,
 * so they go when the agent's cache drops that SVID.
 */
import type { WorkloadX509Svid, X509Update } from './types.js'

interface Variant {
  readonly svids: readonly WorkloadX509Svid[]
  readonly bundles: readonly (readonly [string, readonly Uint8Array[]])[]
  /** undefined: the set composes to no usable SVID (the handler answers PERMISSION_DENIED). */
  readonly bytes: Uint8Array | undefined
}

/** Variants kept per first SVID (distinct companions: other SVIDs, federated bundles). */
const MAX_VARIANTS = 8

function sameRefs(u: X509Update, v: Variant): boolean {
  if (u.svids.length !== v.svids.length || u.bundles.size !== v.bundles.length) return false
  for (let i = 0; i < u.svids.length; i++) if (u.svids[i] !== v.svids[i]) return false
  let i = 0
  for (const [td, certs] of u.bundles) {
    const b = v.bundles[i++]!
    if (b[0] !== td || b[1] !== certs) return false
  }
  return true
}

export class X509EncodeCache {
  private readonly byFirst = new WeakMap<WorkloadX509Svid, Variant[]>()

  /** The encoded response for `u`, from `encode` the first time this exact SVID set is seen. */
  get(u: X509Update, encode: (u: X509Update) => Uint8Array | undefined): Uint8Array | undefined {
    const first = u.svids[0]
    if (first === undefined) return encode(u)
    let list = this.byFirst.get(first)
    const hit = list?.find((v) => sameRefs(u, v))
    if (hit) return hit.bytes
    const bytes = encode(u)
    if (!list) {
      list = []
      this.byFirst.set(first, list)
    }
    list.push({ svids: [...u.svids], bundles: [...u.bundles], bytes })
    if (list.length > MAX_VARIANTS) list.shift()
    return bytes
  }
}
