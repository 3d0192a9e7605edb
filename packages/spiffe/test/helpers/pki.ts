/** Test PKI from the core: a trust domain CA, X509-SVIDs and JWT-SVIDs it issues. */
import type { KeyObject } from 'node:crypto'
import { generateSoftwareKeyPair, softwareKey } from '../../../../src/keymanager/memory.js'
import { TrustBundle } from '../../../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../../../src/spiffe/id.js'
import { mintJwtSvid } from '../../../../src/spiffe/jwt-svid.js'
import type { Signer } from '../../../../src/spiffe/signer.js'
import { issueX509Ca, issueX509Svid } from '../../../../src/spiffe/x509-svid.js'

export interface TestCa {
  readonly td: TrustDomain
  readonly certificate: Uint8Array
  readonly signer: Signer
  readonly jwtSigner: Signer
  readonly jwtKid: string
  /** The SPIFFE bundle document (x509 and jwt authorities). */
  bundle(): TrustBundle
}

export interface IssuedSvid {
  readonly id: string
  readonly chain: Uint8Array
  readonly key: Uint8Array
  readonly privateKey: KeyObject
}

export async function testCa(name: string): Promise<TestCa> {
  const td = TrustDomain.parse(name)
  const k = await generateSoftwareKeyPair('ec-p256')
  const signer = softwareKey('ca', 'ec-p256', k.privateKey, k.publicKey)
  const now = Date.now()
  const certificate = await issueX509Ca({
    subjectPublicKey: k.publicKey,
    trustDomain: td,
    selfSigner: signer,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * 3600_000),
  })
  const j = await generateSoftwareKeyPair('ec-p256')
  const jwtSigner = softwareKey('jwt', 'ec-p256', j.privateKey, j.publicKey)
  const jwtKid = `kid-${name}`
  return {
    td,
    certificate,
    signer,
    jwtSigner,
    jwtKid,
    bundle: () =>
      new TrustBundle({
        trustDomain: td,
        x509Authorities: [certificate],
        jwtAuthorities: new Map([[jwtKid, j.publicKey]]),
      }),
  }
}

export async function issue(ca: TestCa, path: string, ttlMs = 3600_000): Promise<IssuedSvid> {
  const k = await generateSoftwareKeyPair('ec-p256')
  const id = SpiffeId.fromPath(ca.td, path)
  const now = Date.now()
  const leaf = await issueX509Svid({
    subjectPublicKey: k.publicKey,
    spiffeId: id,
    issuer: { certificate: ca.certificate, signer: ca.signer },
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + ttlMs),
  })
  return {
    id: id.toString(),
    chain: leaf,
    key: new Uint8Array(k.privateKey.export({ type: 'pkcs8', format: 'der' })),
    privateKey: k.privateKey,
  }
}

export function jwtFor(ca: TestCa, path: string, audience: readonly string[]): Promise<string> {
  const now = Date.now()
  return mintJwtSvid({
    spiffeId: SpiffeId.fromPath(ca.td, path),
    audience,
    signer: ca.jwtSigner,
    kid: ca.jwtKid,
    issuedAt: new Date(now),
    expiresAt: new Date(now + 300_000),
  })
}
