/**
 * Verified EK certificate chains, cached by the certificates' hashes. Parsing an EK certificate
 * and its chain with @peculiar/x509 and checking the signatures was ~1.4 ms of each TPM
 * attestation (the server managed ~300/s on one core); a fleet re-attests the same TPMs, with
 * the same certificates, every agent restart and SVID expiry.
 *
 * What is cached is only the outcome of a successful verification, for exactly the bytes that
 * were verified (the EK certificate and every intermediate the agent sent, by sha256, in order)
 * against exactly one set of trusted EK CAs:
 *  - the anchor set is part of the cache's state: a call with another set (the manufacturer CA
 *    bundle or directory changed, a new config) clears everything first;
 *  - a hit still requires `now` inside every path certificate's validity, the same check the
 *    full verification makes; outside it the chain is verified again (and refused if expired);
 *  - failures are never cached, so a fixed chain or a newly trusted CA takes effect at once;
 *  - the cache is bounded in bytes (least recently used dropped first).
 * The per-attestation checks that depend on the TPM's answer (the EK public area matching the
 * certificate's key, the credential activation, quote and certify) run on every attestation.
 */
import { createHash } from 'node:crypto'
import {
  type Cert,
  certSpki,
  parseCert,
  type TpmDeviceAttributes,
  tpmDeviceAttributes,
  verifyEkChain,
} from './ekcert.js'
import { TpmAttestationError } from './protocol.js'

/** What a verified EK certificate chain established. */
export interface VerifiedEk {
  /** SPKI DER of the EK certificate's key (compared with the EK public area every time). */
  readonly leafSpki: Uint8Array
  /** sha256 hex of the CA certificate that issued the EK certificate. */
  readonly issuerSha256: string
  readonly attrs: TpmDeviceAttributes
}

interface Entry extends VerifiedEk {
  /** The path's common validity window, ms since the epoch. */
  readonly from: number
  readonly to: number
  readonly bytes: number
}

/** Default bound: ~4 MiB, some 10,000 TPMs' chains. */
export const EK_CHAIN_CACHE_DEFAULT_BYTES = 4 * 2 ** 20
/** Per-entry cost beyond the key and the strings (object, map slot, numbers). */
const ENTRY_OVERHEAD = 256

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

export type EkCheck =
  /** The EK certificate does not parse: only an EK hash allowlist can admit this TPM. */
  | { readonly kind: 'unparsable'; readonly error: TpmAttestationError }
  /** It parses, but no trusted chain (or no CA configured): `error` says why. */
  | {
      readonly kind: 'untrusted'
      readonly leafSpki: Uint8Array
      readonly error?: TpmAttestationError
    }
  | ({ readonly kind: 'verified' } & VerifiedEk)

export class EkChainCache {
  private readonly maxBytes: number
  private readonly entries = new Map<string, Entry>()
  private bytes = 0
  private anchors: readonly Cert[] | undefined
  private anchorsKey = ''
  /** Full verifications run (misses), for tests and the bench. */
  verifications = 0

  constructor(maxBytes = EK_CHAIN_CACHE_DEFAULT_BYTES) {
    this.maxBytes = maxBytes
  }

  stats(): { entries: number; bytes: number; maxBytes: number } {
    return { entries: this.entries.size, bytes: this.bytes, maxBytes: this.maxBytes }
  }

  /**
   * Parses and verifies `leafDer` (with the agent's `chainDers`) against `anchors` at `now`, or
   * answers from an earlier identical verification. Throws only on errors that are not about the
   * certificates (TpmAttestationError 'chain' for a key that cannot be exported).
   */
  check(
    leafDer: Uint8Array,
    chainDers: readonly Uint8Array[],
    anchors: readonly Cert[],
    now: Date,
  ): EkCheck {
    this.useAnchors(anchors)
    const key = [sha256(leafDer), ...chainDers.map(sha256)].join(':')
    const t = now.getTime()
    const hit = this.entries.get(key)
    if (hit && t >= hit.from && t <= hit.to) {
      this.entries.delete(key) // most recently used last
      this.entries.set(key, hit)
      return {
        kind: 'verified',
        leafSpki: hit.leafSpki,
        issuerSha256: hit.issuerSha256,
        attrs: hit.attrs,
      }
    }
    this.verifications++
    let leaf: Cert
    try {
      leaf = parseCert(leafDer, 'the EK certificate')
    } catch (err) {
      if (!(err instanceof TpmAttestationError)) throw err
      return { kind: 'unparsable', error: err }
    }
    const leafSpki = step(() => certSpki(leaf))
    if (anchors.length === 0) return { kind: 'untrusted', leafSpki }
    let v: VerifiedEk
    let path: readonly Cert[]
    try {
      const chain = verifyEkChain(
        leaf,
        chainDers.map((d, i) => parseCert(d, `ek_chain[${i}]`)),
        anchors,
        now,
      )
      path = chain.path
      // Device attributes only from a certificate we verified.
      v = { leafSpki, issuerSha256: chain.issuer.sha256, attrs: tpmDeviceAttributes(leaf.info) }
    } catch (err) {
      if (!(err instanceof TpmAttestationError)) throw err
      return { kind: 'untrusted', leafSpki, error: err }
    }
    this.put(key, v, path)
    return { kind: 'verified', ...v }
  }

  private useAnchors(anchors: readonly Cert[]): void {
    if (anchors === this.anchors) return
    const k = anchors
      .map((a) => a.sha256)
      .sort()
      .join(',')
    this.anchors = anchors
    if (k === this.anchorsKey) return
    // Another set of trusted EK CAs: nothing verified against the old one may be served.
    this.anchorsKey = k
    this.entries.clear()
    this.bytes = 0
  }

  private put(key: string, v: VerifiedEk, path: readonly Cert[]): void {
    const from = Math.max(...path.map((c) => c.info.notBefore.getTime()))
    const to = Math.min(...path.map((c) => c.info.notAfter.getTime()))
    const a = v.attrs
    const bytes =
      ENTRY_OVERHEAD +
      key.length +
      v.leafSpki.length +
      v.issuerSha256.length +
      (a.manufacturer?.length ?? 0) +
      (a.model?.length ?? 0) +
      (a.version?.length ?? 0)
    const old = this.entries.get(key)
    if (old) {
      this.entries.delete(key)
      this.bytes -= old.bytes
    }
    if (bytes > this.maxBytes) return
    this.entries.set(key, { ...v, from, to, bytes })
    this.bytes += bytes
    while (this.bytes > this.maxBytes) {
      const [k, e] = this.entries.entries().next().value!
      this.entries.delete(k)
      this.bytes -= e.bytes
    }
  }
}

function step<T>(fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof TpmAttestationError) throw err
    throw new TpmAttestationError(
      'chain',
      `EK certificate key: ${(err as Error)?.message ?? String(err)}`,
      undefined,
      err,
    )
  }
}
