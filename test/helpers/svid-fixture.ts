/** Real SVIDs under a throwaway CA, and a log collector: for the sealed-cache tests. */
import type { PersistedSvid } from '../../src/agent/cache/sealed-svids.js'
import type { Log } from '../../src/common/log.js'
import { generateSoftwareKeyPair } from '../../src/keymanager/memory.js'
import { softwareSigner } from '../../src/keymanager/types.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'

export const td = TrustDomain.parse('example.org')
export const AGENT = 'spiffe://example.org/spire/agent/join_token/abc'

export async function fixture(n: number, lifeMs = 3600_000) {
  const ca = await generateSoftwareKeyPair('ec-p256')
  const caSigner = softwareSigner(ca.privateKey, ca.publicKey)
  const now = Date.now()
  const caDer = await issueX509Ca({
    subjectPublicKey: ca.publicKey,
    trustDomain: td,
    selfSigner: caSigner,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * 3600_000),
  })
  const svids: PersistedSvid[] = []
  for (let i = 0; i < n; i++) {
    const k = await generateSoftwareKeyPair('ec-p256')
    const leaf = await issueX509Svid({
      subjectPublicKey: k.publicKey,
      spiffeId: SpiffeId.parse(`spiffe://example.org/w${i}`),
      issuer: { certificate: caDer, signer: caSigner },
      notBefore: new Date(now - 10_000),
      notAfter: new Date(now + lifeMs),
    })
    svids.push({
      entryId: `e${i}`,
      spiffeId: `spiffe://example.org/w${i}`,
      chain: [leaf],
      privateKey: new Uint8Array(k.privateKey.export({ type: 'pkcs8', format: 'der' })),
      hint: '',
      entryRevision: 1,
    })
  }
  return { svids, bundle: new TrustBundle({ trustDomain: td, x509Authorities: [caDer] }) }
}

export function collect(): {
  log: Log
  lines: { msg: string; fields?: Record<string, unknown> }[]
} {
  const lines: { msg: string; fields?: Record<string, unknown> }[] = []
  return { log: (_l, msg, fields) => lines.push({ msg, ...(fields ? { fields } : {}) }), lines }
}
