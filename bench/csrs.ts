/**
 * Distinct CSRs for the signing benches (no cache, in the server or in OpenSSL, can profit from
 * a batch that repeats one CSR), and the floor of proof of possession over the very same CSRs.
 */
import { createPublicKey, sign as cryptoSign, KeyObject, verify } from 'node:crypto'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { createCsr } from '../src/spiffe/csr.js'
import * as der from '../src/spiffe/der.js'

export interface BenchCsr {
  readonly csr: Uint8Array
  /** CertificationRequestInfo (what the CSR signature covers), signature (DER), EC point. */
  readonly info: Uint8Array
  readonly signature: Uint8Array
  readonly point: Uint8Array
  readonly jwk: { kty: 'EC'; crv: string; x: string; y: string }
}

/** `n` CSRs, each for its own fresh P-256 key. */
export async function distinctCsrs(n: number): Promise<BenchCsr[]> {
  const keys = new MemoryKeyManager()
  const out: BenchCsr[] = []
  for (let i = 0; i < n; i++) {
    const csr = await createCsr(await keys.generateKey(`w${i}`, 'ec-p256'))
    const outer = der.readTlv(csr, 0, 'CSR')
    const [info, , sig] = der.children(outer.value, 'CSR')
    const [, , spki] = der.children(info!.value, 'CertificationRequestInfo')
    const ec = der.ecJwkFromSpki(spki!.raw)!
    out.push({
      csr,
      info: info!.raw,
      signature: sig!.value.subarray(1),
      point: ec.point,
      jwk: { kty: 'EC', crv: ec.crv, x: ec.x, y: ec.y },
    })
    await keys.deleteKey(`w${i}`)
  }
  return out
}

/**
 * The floor any server verifying proof of possession pays per SVID, over these CSRs: import the
 * CSR's key (the cheapest way known: WebCrypto raw point import, what the server does; or JWK,
 * the way before 2026-12-02 14:00), verify the CSR's signature, sign a certificate-sized message
 * with the CA key.
 */
export async function floor(
  csrs: readonly BenchCsr[],
  /** Undefined: proof of possession alone (the CA signature is made elsewhere, in a token). */
  caKey: KeyObject | undefined,
  importWith: 'raw' | 'jwk' = 'raw',
): Promise<void> {
  const tbs = new Uint8Array(450).fill(7)
  for (const c of csrs) {
    const k =
      importWith === 'raw'
        ? KeyObject.from(
            await globalThis.crypto.subtle.importKey(
              'raw',
              c.point,
              { name: 'ECDSA', namedCurve: 'P-256' },
              true,
              ['verify'],
            ),
          )
        : createPublicKey({ key: c.jwk, format: 'jwk' })
    if (!verify('sha256', c.info, k, c.signature)) throw new Error('a bench CSR does not verify')
    if (caKey) cryptoSign('sha256', tbs, { key: caKey, dsaEncoding: 'ieee-p1363' })
  }
}
