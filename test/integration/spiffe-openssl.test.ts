import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key } from '../../src/keymanager/types.js'
import { certificateToPem, TrustBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { mintJwtSvid, validateJwtSvid } from '../../src/spiffe/jwt-svid.js'
import { issueX509Ca, issueX509Svid, validateX509Svid } from '../../src/spiffe/x509-svid.js'
import { run } from '../helpers/exec.js'

// OpenSSL is the independent judge of the certificates we issue; jose (through a plain JWK Set)
// of the JWT-SVIDs.

const td = TrustDomain.parse('example.org')
const workload = SpiffeId.parse('spiffe://example.org/ns/prod/sa/api')
const now = new Date()
const notBefore = new Date(now.getTime() - 10_000)
const inHours = (h: number) => new Date(now.getTime() + h * 3600_000)

let dir = ''
let rootKey: Key
let rootDer: Uint8Array

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spiffe-edge-openssl-'))
  // The root CA's key lives on disk, as a server's would; reopen it to sign, like after a restart.
  await new DiskKeyManager(join(dir, 'keys')).generateKey('root', 'ec-p256')
  const reopened = await new DiskKeyManager(join(dir, 'keys')).getKey('root')
  assert.ok(reopened)
  rootKey = reopened
  rootDer = await issueX509Ca({
    subjectPublicKey: rootKey.publicKey,
    trustDomain: td,
    selfSigner: rootKey,
    notBefore,
    notAfter: inHours(24),
  })
  await writeFile(join(dir, 'root.pem'), certificateToPem(rootDer))
})

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true })
})

async function openssl(...args: string[]): Promise<string> {
  const r = await run('openssl', args)
  assert.equal(r.code, 0, `openssl ${args.join(' ')}: ${r.stderr}${r.stdout}`)
  return r.stdout
}

async function writePem(name: string, der: Uint8Array): Promise<string> {
  const p = join(dir, name)
  await writeFile(p, certificateToPem(der))
  return p
}

/** The SAN, key usage and basic constraints as openssl prints them. */
async function extensions(pem: string): Promise<string> {
  return openssl('x509', '-in', pem, '-noout', '-ext', 'subjectAltName,keyUsage,basicConstraints')
}

function checkLeafText(text: string): void {
  assert.equal(text.match(/URI:/g)?.length, 1, text)
  assert.match(text, /URI:spiffe:\/\/example\.org\/ns\/prod\/sa\/api/)
  assert.match(text, /X509v3 Key Usage: critical\n\s+Digital Signature/)
  assert.match(text, /X509v3 Basic Constraints: critical\n\s+CA:FALSE/)
}

describe('X509-SVIDs checked by openssl', () => {
  test('root -> leaf verifies, strictly, for TLS client and server use', async () => {
    const leafKey = await new MemoryKeyManager().generateKey('leaf', 'ec-p256')
    const der = await issueX509Svid({
      subjectPublicKey: leafKey.publicKey,
      spiffeId: workload,
      dnsNames: ['api.example.org'],
      issuer: { certificate: rootDer, signer: rootKey },
      notBefore,
      notAfter: inHours(1),
    })
    const svid = await writePem('svid.pem', der)
    const root = join(dir, 'root.pem')
    assert.match(await openssl('verify', '-CAfile', root, svid), /svid\.pem: OK/)
    await openssl('verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', root, svid)
    await openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', root, svid)
    checkLeafText(await extensions(svid))
    const rootText = await extensions(root)
    assert.match(rootText, /X509v3 Key Usage: critical\n\s+Certificate Sign, CRL Sign/)
    assert.match(rootText, /X509v3 Basic Constraints: critical\n\s+CA:TRUE/)
    assert.equal(rootText.match(/URI:/g)?.length, 1)
    assert.match(rootText, /URI:spiffe:\/\/example\.org\s*$/m)
    // Our own validator agrees.
    const bundle = new TrustBundle({ trustDomain: td, x509Authorities: [rootDer] })
    assert.ok(
      validateX509Svid([der], () => bundle.x509Bundle(), new Date()).spiffeId.equals(workload),
    )
  })

  test('root -> intermediate (P-384, on disk) -> RSA leaf verifies with -untrusted', async () => {
    const interKey = await new DiskKeyManager(join(dir, 'keys')).generateKey('inter', 'ec-p384')
    const interDer = await issueX509Ca({
      subjectPublicKey: interKey.publicKey,
      trustDomain: td,
      issuer: { certificate: rootDer, signer: rootKey },
      notBefore,
      notAfter: inHours(12),
    })
    const leafKey = await new MemoryKeyManager().generateKey('leaf', 'rsa-2048')
    const der = await issueX509Svid({
      subjectPublicKey: leafKey.publicKey,
      spiffeId: workload,
      issuer: { certificate: interDer, signer: interKey },
      notBefore,
      notAfter: inHours(1),
    })
    const inter = await writePem('inter.pem', interDer)
    const svid = await writePem('svid-inter.pem', der)
    const root = join(dir, 'root.pem')
    assert.match(
      await openssl('verify', '-x509_strict', '-CAfile', root, '-untrusted', inter, svid),
      /svid-inter\.pem: OK/,
    )
    // Without the intermediate there is no path.
    const r = await run('openssl', ['verify', '-CAfile', root, svid])
    assert.notEqual(r.code, 0)
    const text = await extensions(svid)
    checkLeafText(text)
    assert.match(text, /Digital Signature, Key Encipherment/)
    const interText = await extensions(inter)
    assert.match(interText, /X509v3 Basic Constraints: critical\n\s+CA:TRUE/)
    assert.match(
      await openssl('x509', '-in', inter, '-noout', '-text'),
      /Signature Algorithm: ecdsa-with-SHA256/,
    )
    assert.match(
      await openssl('x509', '-in', svid, '-noout', '-text'),
      /Signature Algorithm: ecdsa-with-SHA384/,
    )
    const bundle = new TrustBundle({ trustDomain: td, x509Authorities: [rootDer] })
    const v = validateX509Svid([der, interDer], () => bundle.x509Bundle(), new Date())
    assert.equal(v.path.length, 3)
  })
})

describe('JWT-SVIDs checked by jose', () => {
  const audience = 'spiffe://example.org/db'
  let signer: Key
  let bundle: TrustBundle
  let token: string

  before(async () => {
    signer = await new DiskKeyManager(join(dir, 'keys')).generateKey('jwt', 'ec-p256')
    bundle = new TrustBundle({
      trustDomain: td,
      x509Authorities: [rootDer],
      jwtAuthorities: new Map([['jwt-1', signer.publicKey]]),
      sequence: 1,
    })
    token = await mint({})
  })

  const mint = (over: Partial<Parameters<typeof mintJwtSvid>[0]>) =>
    mintJwtSvid({
      spiffeId: workload,
      audience: [audience],
      signer,
      kid: 'jwt-1',
      issuedAt: new Date(),
      expiresAt: new Date(Date.now() + 5 * 60_000),
      ...over,
    })

  const validate = (t: string, o: Partial<Parameters<typeof validateJwtSvid>[1]> = {}) =>
    validateJwtSvid(t, {
      audience,
      bundles: (t2) => (t2.equals(td) ? bundle.jwtBundle() : undefined),
      now: new Date(),
      ...o,
    })

  test('a minted JWT-SVID verifies with a jose JWK Set built from the SPIFFE bundle', async () => {
    // A relying party takes the jwt-svid entries; jose only accepts use "sig" or none.
    const doc = JSON.parse(bundle.toSpiffeJson()) as { keys: Record<string, unknown>[] }
    const keys = doc.keys
      .filter((k) => k.use === 'jwt-svid')
      .map(({ use: _use, ...k }) => k) as JSONWebKeySet['keys']
    const jwks = createLocalJWKSet({ keys })
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { audience })
    assert.equal(payload.sub, workload.toString())
    assert.equal(protectedHeader.kid, 'jwt-1')
    assert.equal(protectedHeader.typ, 'JWT')
    // And through a bundle that went over the wire.
    const wire = TrustBundle.fromSpiffeJson(td, bundle.toSpiffeJson())
    const r = await validateJwtSvid(token, {
      audience,
      bundles: () => wire.jwtBundle(),
      now: new Date(),
    })
    assert.ok(r.spiffeId.equals(workload))
  })

  test('validateJwtSvid rejects what it must', async () => {
    const [h, p, s] = token.split('.') as [string, string, string]
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>
    const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
    const signed = async (header: unknown, claims: unknown) => {
      const input = `${enc(header)}.${enc(claims)}`
      const sig = await signer.sign(new TextEncoder().encode(input))
      return `${input}.${Buffer.from(sig).toString('base64url')}`
    }
    const otherKid = await mint({ kid: 'jwt-2' })
    const notSpiffe = await signed(
      { alg: 'ES256', kid: 'jwt-1', typ: 'JWT' },
      { ...payload, sub: 'api' },
    )
    const tampered = `${h}.${enc({ ...payload, sub: 'spiffe://example.org/root' })}.${s}`
    const cases: [string, () => Promise<unknown>][] = [
      ['wrong audience', () => validate(token, { audience: 'spiffe://example.org/other' })],
      ['expired', () => validate(token, { now: new Date(Date.now() + 3600_000) })],
      ['unknown kid', () => validate(otherKid)],
      ['alg none', () => validate(`${enc({ alg: 'none', kid: 'jwt-1', typ: 'JWT' })}.${p}.`)],
      ['tampered payload', () => validate(tampered)],
      ['sub not a SPIFFE ID', () => validate(notSpiffe)],
    ]
    for (const [name, f] of cases) {
      await assert.rejects(f(), { code: 'ERR_SVID_INVALID' }, name)
    }
    assert.ok(await validate(token))
  })
})
