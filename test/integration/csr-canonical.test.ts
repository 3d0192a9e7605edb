import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject, sign } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key } from '../../src/keymanager/types.js'
import { certificateToPem } from '../../src/spiffe/bundle.js'
import { CsrError, createCsr, publicKeyFromCsr } from '../../src/spiffe/csr.js'
import * as der from '../../src/spiffe/der.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'
import { run } from '../helpers/exec.js'

// The CA must never sign bytes the requester chose: a CSR's SPKI is accepted only in the canonical
// DER of its key, and every certificate signed for an accepted CSR is parsed by OpenSSL.

const td = TrustDomain.parse('example.org')
let dir = ''
let rootKey: Key
let rootDer: Uint8Array

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spiffe-edge-csr-'))
  rootKey = await new MemoryKeyManager().generateKey('root', 'ec-p256')
  rootDer = await issueX509Ca({
    subjectPublicKey: rootKey.publicKey,
    trustDomain: td,
    selfSigner: rootKey,
    notBefore: new Date(Date.now() - 10_000),
    notAfter: new Date(Date.now() + 3600_000),
  })
})

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true })
})

const EC_OID = '1.2.840.10045.2.1'
const P256_OID = '1.2.840.10045.3.1.7'

function point(pub: KeyObject): Uint8Array {
  const jwk = pub.export({ format: 'jwk' })
  const b = (s?: string) => Buffer.from(s ?? '', 'base64url')
  return Uint8Array.from([0x04, ...b(jwk.x), ...b(jwk.y)])
}

/** A PKCS#10 CSR around any SPKI bytes, really signed by `priv` (so only the SPKI is wrong). */
function csrWith(
  spki: Uint8Array,
  priv: KeyObject,
  afterSpki: Uint8Array = new Uint8Array(),
): Uint8Array {
  const info = der.seq(
    Uint8Array.of(0x02, 0x01, 0x00),
    der.seq(),
    spki,
    afterSpki,
    Uint8Array.of(0xa0, 0x00),
  )
  const sig = sign('sha256', info, priv)
  return der.seq(info, der.seq(der.oid('1.2.840.10045.4.3.2')), der.bits(sig))
}

async function opensslParses(certDer: Uint8Array, name: string): Promise<void> {
  const p = join(dir, name)
  await writeFile(p, certificateToPem(certDer))
  const r = await run('openssl', ['x509', '-in', p, '-noout', '-text'])
  assert.equal(r.code, 0, `openssl cannot parse ${name}: ${r.stderr}`)
}

async function signFor(key: KeyObject): Promise<Uint8Array> {
  return issueX509Svid({
    subjectPublicKey: key,
    spiffeId: SpiffeId.parse('spiffe://example.org/spire/agent/x/1'),
    issuer: { certificate: rootDer, signer: rootKey },
    notBefore: new Date(Date.now() - 10_000),
    notAfter: new Date(Date.now() + 600_000),
  })
}

test('a CSR with junk inside or around its SPKI is refused', async () => {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const alg = der.seq(der.oid(EC_OID), der.oid(P256_OID))
  const good = der.seq(alg, der.bits(point(publicKey)))
  const junk = Uint8Array.from(Buffer.from('attacker chosen bytes'))
  const variants: Record<string, Uint8Array> = {
    'element after the BIT STRING': der.seq(alg, der.bits(point(publicKey)), der.octets(junk)),
    'extra AlgorithmIdentifier parameter': der.seq(
      der.seq(der.oid(EC_OID), der.oid(P256_OID), der.octets(junk)),
      der.bits(point(publicKey)),
    ),
    'unused bits in the BIT STRING': der.seq(
      alg,
      der.tlv(0x03, Uint8Array.of(0x07), point(publicKey)),
    ),
    'long-form length': Uint8Array.from([0x30, 0x81, good.length - 2, ...good.subarray(2)]),
  }
  for (const [what, spki] of Object.entries(variants)) {
    await assert.rejects(publicKeyFromCsr(csrWith(spki, privateKey)), CsrError, what)
  }
  // Junk after the SPKI inside the signed CertificationRequestInfo is never embedded: the key is
  // accepted (its SPKI is canonical) and the certificate carries only the canonical SPKI.
  const key = await publicKeyFromCsr(csrWith(good, privateKey, der.octets(junk)))
  const cert = await signFor(key)
  assert.ok(!Buffer.from(cert).includes(Buffer.from(junk)), 'junk reached the certificate')
  await opensslParses(cert, 'after-spki.pem')
})

test('accepted key types are P-256, P-384, RSA 2048-4096; each signed certificate parses with openssl', async () => {
  const cases: [string, KeyObject, KeyObject][] = []
  for (const namedCurve of ['prime256v1', 'secp384r1']) {
    const k = generateKeyPairSync('ec', { namedCurve })
    cases.push([namedCurve, k.publicKey, k.privateKey])
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  cases.push(['rsa-2048', rsa.publicKey, rsa.privateKey])
  for (const [name, pub, priv] of cases) {
    const spki = new Uint8Array(pub.export({ type: 'spki', format: 'der' }))
    const info = der.seq(
      Uint8Array.of(0x02, 0x01, 0x00),
      der.seq(),
      spki,
      Uint8Array.of(0xa0, 0x00),
    )
    const algOid =
      name === 'rsa-2048'
        ? der.seq(der.oid('1.2.840.113549.1.1.11'), Uint8Array.of(0x05, 0x00))
        : der.seq(der.oid(name === 'secp384r1' ? '1.2.840.10045.4.3.3' : '1.2.840.10045.4.3.2'))
    const hash = name === 'secp384r1' ? 'sha384' : 'sha256'
    const csr = der.seq(info, algOid, der.bits(sign(hash, info, priv)))
    const key = await publicKeyFromCsr(csr)
    await opensslParses(await signFor(key), `${name}.pem`)
  }
  // Our own CSRs (the agent's) still pass.
  const agentKey = await new MemoryKeyManager().generateKey('agent', 'ec-p256')
  await opensslParses(await signFor(await publicKeyFromCsr(await createCsr(agentKey))), 'own.pem')

  const small = generateKeyPairSync('rsa', { modulusLength: 1024 })
  const ed = generateKeyPairSync('ed25519')
  for (const [what, pub, priv, alg] of [
    ['rsa-1024', small.publicKey, small.privateKey, '1.2.840.113549.1.1.11'],
    ['ed25519', ed.publicKey, ed.privateKey, '1.3.101.112'],
  ] as const) {
    const spki = new Uint8Array(pub.export({ type: 'spki', format: 'der' }))
    const info = der.seq(
      Uint8Array.of(0x02, 0x01, 0x00),
      der.seq(),
      spki,
      Uint8Array.of(0xa0, 0x00),
    )
    const s = what === 'ed25519' ? sign(null, info, priv) : sign('sha256', info, priv)
    const csr = der.seq(info, der.seq(der.oid(alg)), der.bits(s))
    await assert.rejects(publicKeyFromCsr(csr), CsrError, what)
  }
})
