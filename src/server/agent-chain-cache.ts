/**
 * Agent SVID chains already validated against our bundle, so a signed node API request does not
 * re-parse and re-verify the same chain with @peculiar/x509 each time (the agent sends the same
 * chain on every request until it renews).
 *
 * Only what cannot change is cached: the key is the sha256 of the bundle's X.509 authorities and
 * of every chain certificate, so a different chain or any change to the trust inputs (a CA
 * rotation, a bundle update) is a miss. A hit still needs `now` inside every path certificate's
 * validity; the node record (attested, not banned, current serial) and the request signature are
 * checked by the caller on every request, never cached. Failures are not cached. Bounded in
 * bytes, least recently used dropped first.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto'
import type { X509Bundle } from '../spiffe/bundle.js'
import { SvidError } from '../spiffe/errors.js'
import type { SpiffeId, TrustDomain } from '../spiffe/id.js'
import { validateX509Svid } from '../spiffe/x509-svid.js'

/** What a request needs from its validated chain. */
export interface ValidatedAgentChain {
  readonly spiffeId: SpiffeId
  /** The leaf's serial as @peculiar/x509 prints it (hex). */
  readonly serial: string
  readonly leafKey: KeyObject
  readonly validFrom: number
  readonly validUntil: number
}

const DEFAULT_MAX_BYTES = 4 * 1024 * 1024
/** Per-entry overhead beyond the chain bytes (key object, strings, map slot), a round estimate. */
const ENTRY_OVERHEAD = 512

export class AgentChainCache {
  private readonly maxBytes: number
  private readonly entries = new Map<string, { v: ValidatedAgentChain; bytes: number }>()
  private bytes = 0
  /** Validations done (misses), for tests and metrics. */
  misses = 0

  constructor(maxBytes = DEFAULT_MAX_BYTES) {
    this.maxBytes = maxBytes
  }

  /**
   * The chain validated against `bundle` at `now` (cached when it was before), or a SvidError.
   */
  validate(
    chain: readonly Uint8Array[],
    trustDomain: TrustDomain,
    bundle: X509Bundle,
    now: number,
  ): ValidatedAgentChain {
    const h = createHash('sha256')
    // Length-prefixed, authorities and chain apart, so no two inputs hash alike by concatenation.
    const part = (tag: number, b: Uint8Array) => {
      const head = Buffer.alloc(5)
      head[0] = tag
      head.writeUInt32BE(b.length, 1)
      h.update(head).update(b)
    }
    part(0, Buffer.from(trustDomain.name, 'utf8'))
    for (const a of bundle.authorities) part(1, a)
    let size = ENTRY_OVERHEAD
    for (const c of chain) {
      part(2, c)
      size += c.length
    }
    const key = h.digest('base64')
    const hit = this.entries.get(key)
    if (hit) {
      const v = hit.v
      if (now < v.validFrom) throw new SvidError('a certificate of the chain is not valid yet')
      if (now > v.validUntil) throw new SvidError('a certificate of the chain has expired')
      // Most recently used last.
      this.entries.delete(key)
      this.entries.set(key, hit)
      return v
    }
    this.misses++
    const validated = validateX509Svid(
      chain,
      (td) => (td.equals(trustDomain) ? bundle : undefined),
      new Date(now),
    )
    const v: ValidatedAgentChain = {
      spiffeId: validated.spiffeId,
      serial: validated.leaf.serialNumber,
      leafKey: createPublicKey({
        key: Buffer.from(validated.leaf.spki),
        format: 'der',
        type: 'spki',
      }),
      validFrom: validated.validFrom.getTime(),
      validUntil: validated.validUntil.getTime(),
    }
    if (size <= this.maxBytes) {
      this.entries.set(key, { v, bytes: size })
      this.bytes += size
      for (const [k, e] of this.entries) {
        if (this.bytes <= this.maxBytes) break
        this.entries.delete(k)
        this.bytes -= e.bytes
      }
    }
    return v
  }

  get size(): number {
    return this.entries.size
  }
}
