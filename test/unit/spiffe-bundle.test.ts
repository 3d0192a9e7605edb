import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { certificateToPem, parsePemCertificates, TrustBundle } from '../../src/spiffe/bundle.js'
import { spkiFromPublicJwk } from '../../src/spiffe/der.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca } from '../../src/spiffe/x509-svid.js'

const td = TrustDomain.parse('example.org')
const km = new MemoryKeyManager()

async function ca(id: string, type: 'ec-p256' | 'rsa-2048'): Promise<Uint8Array> {
  const key = await km.generateKey(id, type)
  return issueX509Ca({
    subjectPublicKey: key.publicKey,
    trustDomain: td,
    selfSigner: key,
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2027-01-01T00:00:00Z'),
  })
}

const ecRoot = await ca('ec-root', 'ec-p256')
const rsaRoot = await ca('rsa-root', 'rsa-2048')
const jwtEc = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const jwtRsa = generateKeyPairSync('rsa', { modulusLength: 2048 })

function sample(): TrustBundle {
  return new TrustBundle({
    trustDomain: td,
    x509Authorities: [ecRoot, rsaRoot],
    jwtAuthorities: new Map([
      ['kid-ec', jwtEc.publicKey],
      ['kid-rsa', jwtRsa.privateKey], // a private key must be published as its public half
    ]),
    sequence: 42,
    refreshHintSeconds: 300,
  })
}

type Jwk = Record<string, unknown>

test('a bundle round-trips through the SPIFFE bundle format', () => {
  const b = sample()
  const json = b.toSpiffeJson()
  const doc = JSON.parse(json) as {
    keys: Jwk[]
    spiffe_sequence: number
    spiffe_refresh_hint: number
  }
  assert.equal(doc.spiffe_sequence, 42)
  assert.equal(doc.spiffe_refresh_hint, 300)
  assert.equal(doc.keys.length, 4)
  const x509Keys = doc.keys.filter((k) => k.use === 'x509-svid')
  const jwtKeys = doc.keys.filter((k) => k.use === 'jwt-svid')
  assert.deepEqual(
    x509Keys.map((k) => k.kty),
    ['EC', 'RSA'],
  )
  for (const k of x509Keys) {
    assert.equal(k.kid, undefined)
    assert.equal((k.x5c as string[]).length, 1)
  }
  assert.deepEqual(
    jwtKeys.map((k) => k.kid),
    ['kid-ec', 'kid-rsa'],
  )
  assert.ok(!json.includes('"d"'), 'no private key material')
  const back = TrustBundle.fromSpiffeJson(td, json)
  assert.ok(back.equals(b))
  assert.ok(b.equals(back))
  assert.equal(back.toSpiffeJson(), json)
  assert.ok(back.trustDomain.equals(td))
  assert.deepEqual(back.x509Bundle().authorities, [ecRoot, rsaRoot])
  assert.deepEqual([...back.jwtBundle().authorities.keys()], ['kid-ec', 'kid-rsa'])
  assert.ok(back.jwtBundle().authorities.get('kid-rsa')?.equals(jwtRsa.publicKey))
  assert.ok(back.jwtBundle().trustDomain.equals(td))
  assert.ok(!back.equals(new TrustBundle({ trustDomain: td, sequence: 42 })))
  // Bytes work as well as strings.
  assert.ok(TrustBundle.fromSpiffeJson(td, new TextEncoder().encode(json)).equals(b))
})

test('an empty bundle and defaults', () => {
  const b = TrustBundle.fromSpiffeJson(td, '{"keys":[]}')
  assert.equal(b.sequence, 0)
  assert.equal(b.refreshHintSeconds, undefined)
  assert.deepEqual(b.x509Authorities, [])
  assert.equal(b.jwtAuthorities.size, 0)
  assert.equal(b.toSpiffeJson(), '{"spiffe_sequence":0,"keys":[]}')
})

test('toPem and parsePemCertificates are inverses', () => {
  const pem = sample().toPem()
  assert.equal(pem.match(/BEGIN CERTIFICATE/g)?.length, 2)
  assert.deepEqual(parsePemCertificates(pem), [ecRoot, rsaRoot])
  assert.deepEqual(parsePemCertificates(certificateToPem(rsaRoot)), [rsaRoot])
  for (const line of pem.split('\n')) assert.ok(line.length <= 64)
})

test('a key of unknown use or kty is ignored, not the whole bundle; strict refuses it', () => {
  const doc = JSON.parse(sample().toSpiffeJson()) as { keys: Jwk[] }
  const k0 = doc.keys[0]!
  const before = TrustBundle.fromSpiffeJson(td, JSON.stringify(doc))
  doc.keys.push({ ...k0, use: 'wit-svid', x5c: undefined, kid: 'w' })
  doc.keys.push({ kty: 'EC', use: 'sig' })
  doc.keys.push({ kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'e', use: 'jwt-svid' })
  doc.keys.push({ kty: 'oct', k: 'AAAA', kid: 'h', use: 'jwt-svid' })
  doc.keys.push({ ...k0, kty: 'PQC' })
  doc.keys.push({ ...k0, use: 'X509-SVID' }) // uses are case-sensitive: unknown
  const parsed = TrustBundle.fromSpiffeJson(td, JSON.stringify(doc))
  assert.equal(parsed.x509Authorities.length, 2)
  assert.equal(parsed.jwtAuthorities.size, 2)
  assert.ok(parsed.equals(before), 'the known keys are all still there')
  for (const extra of [
    { kty: 'EC', use: 'sig' },
    { kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'e', use: 'jwt-svid' },
  ]) {
    const one = JSON.parse(sample().toSpiffeJson()) as { keys: unknown[] }
    one.keys.push(extra)
    assert.throws(() => TrustBundle.fromSpiffeJson(td, JSON.stringify(one), { strict: true }), {
      code: 'ERR_BUNDLE_INVALID',
    })
  }
  // wit-svid is a spec use we do not serve: skipped even when strict.
  const wit = JSON.parse(sample().toSpiffeJson()) as { keys: Jwk[] }
  wit.keys.push({ ...wit.keys[0]!, use: 'wit-svid', x5c: undefined, kid: 'w' })
  assert.equal(
    TrustBundle.fromSpiffeJson(td, JSON.stringify(wit), { strict: true }).x509Authorities.length,
    2,
  )
})

test('malformed bundles are ERR_BUNDLE_INVALID', () => {
  const good = JSON.parse(sample().toSpiffeJson()) as { keys: Jwk[] }
  const x = good.keys[0]! // EC x509 authority
  const xr = good.keys[1]! // RSA x509 authority
  const j = good.keys[2]! // EC jwt authority
  const ecJwk = jwtEc.publicKey.export({ format: 'jwk' })
  const withKeys = (...keys: unknown[]) => JSON.stringify({ keys })
  const cases: [string, string][] = [
    ['not JSON', '{keys:'],
    ['array', '[]'],
    ['null', 'null'],
    ['no keys', '{"spiffe_sequence":1}'],
    ['keys not an array', '{"keys":{}}'],
    ['negative sequence', '{"keys":[],"spiffe_sequence":-1}'],
    ['string sequence', '{"keys":[],"spiffe_sequence":"1"}'],
    ['fractional refresh hint', '{"keys":[],"spiffe_refresh_hint":1.5}'],
    ['key not an object', withKeys('x')],
    ['missing kty', withKeys({ ...x, kty: undefined })],
    ['missing use', withKeys({ ...x, use: undefined })],
    ['use not a string', withKeys({ ...x, use: 1 })],
    ['x509 with kid', withKeys({ ...x, kid: 'k' })],
    ['missing x5c', withKeys({ ...x, x5c: undefined })],
    ['empty x5c', withKeys({ ...x, x5c: [] })],
    [
      'x5c with 2 certs',
      withKeys({ ...x, x5c: [...(x.x5c as string[]), ...(xr.x5c as string[])] }),
    ],
    ['x5c not base64', withKeys({ ...x, x5c: ['!!!'] })],
    // A base64url character in place of the first one (a '+'-free encoding must fail too).
    ['x5c base64url', withKeys({ ...x, x5c: [`-${(x.x5c as string[])[0]!.slice(1)}`] })],
    ['x5c not a certificate', withKeys({ ...x, x5c: ['AAAA'] })],
    ['x5c not a string', withKeys({ ...x, x5c: [1] })],
    ['JWK does not match x5c', withKeys({ ...x, x: ecJwk.x, y: ecJwk.y })],
    ['kty does not match x5c', withKeys({ ...xr, x5c: x.x5c })],
    ['jwt key without kid', withKeys({ ...j, kid: undefined })],
    ['jwt key with empty kid', withKeys({ ...j, kid: '' })],
    ['duplicate kid', withKeys(j, { ...good.keys[3]!, kid: j.kid })],
    ['jwt key with private part', withKeys({ ...j, d: 'AAAA' })],
    ['jwt EC off-curve', withKeys({ ...j, y: j.x })],
    ['jwt EC missing y', withKeys({ ...j, y: undefined })],
  ]
  for (const [name, json] of cases) {
    assert.throws(() => TrustBundle.fromSpiffeJson(td, json), { code: 'ERR_BUNDLE_INVALID' }, name)
  }
})

test('constructor rejects empty kids and bad sequence numbers', () => {
  assert.throws(
    () => new TrustBundle({ trustDomain: td, jwtAuthorities: new Map([['', jwtEc.publicKey]]) }),
    { code: 'ERR_BUNDLE_INVALID' },
  )
  assert.throws(() => new TrustBundle({ trustDomain: td, sequence: -1 }), {
    code: 'ERR_BUNDLE_INVALID',
  })
  assert.throws(() => new TrustBundle({ trustDomain: td, refreshHintSeconds: 0.5 }), {
    code: 'ERR_BUNDLE_INVALID',
  })
  // Duplicate authorities collapse.
  const b = new TrustBundle({ trustDomain: td, x509Authorities: [ecRoot, Uint8Array.from(ecRoot)] })
  assert.equal(b.x509Authorities.length, 1)
})

test('a bundle is a value: its document is made once, and the bytes it was built from can change after', () => {
  const der = new Uint8Array(ecRoot)
  const b = new TrustBundle({ trustDomain: td, x509Authorities: [der], sequence: 3 })
  const doc = b.toSpiffeJson()
  der.fill(0)
  assert.deepEqual(b.x509Authorities[0], ecRoot)
  assert.equal(b.toSpiffeJson(), doc)
  assert.ok(TrustBundle.fromSpiffeJson(td, doc).equals(b))
})

test('an x509 key JWK is compared with its certificate as SPKI bytes: exact, RSA, trimmed coordinates, non-canonical base64url', () => {
  // The SPKI the JWK members spell is the one OpenSSL exports, for every curve and RSA.
  for (const [type, o] of [
    ['ec', { namedCurve: 'P-256' }],
    ['ec', { namedCurve: 'P-384' }],
    ['ec', { namedCurve: 'P-521' }],
    ['rsa', { modulusLength: 2048 }],
  ] as const) {
    const { publicKey } = generateKeyPairSync(type as 'ec', o as { namedCurve: string })
    const want = Buffer.from(publicKey.export({ type: 'spki', format: 'der' }))
    const jwk = publicKey.export({ format: 'jwk' }) as Record<string, unknown>
    assert.deepEqual(Buffer.from(spkiFromPublicJwk(jwk)!), want, type)
  }
  // An encoder that trims a coordinate's leading zero octets names the same key.
  let found = false
  for (let i = 0; i < 5000 && !found; i++) {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const jwk = publicKey.export({ format: 'jwk' }) as { x: string }
    const x = Buffer.from(jwk.x, 'base64url')
    if (x[0] !== 0) continue
    found = true
    const trimmed = { ...jwk, x: x.subarray(1).toString('base64url') }
    const want = Buffer.from(publicKey.export({ type: 'spki', format: 'der' }))
    assert.deepEqual(Buffer.from(spkiFromPublicJwk(trimmed)!), want)
  }
  assert.ok(found)
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = publicKey.export({ format: 'jwk' }) as { x: string; y: string }
  for (const bad of [
    { ...jwk, x: `${jwk.x}=` }, // padded
    { ...jwk, x: `${jwk.x.slice(0, -1)}!` }, // not base64url
    { ...jwk, x: Buffer.alloc(33, 1).toString('base64url') }, // longer than the curve
    { ...jwk, crv: 'P-192' },
    { ...jwk, y: undefined },
  ]) {
    assert.equal(spkiFromPublicJwk(bad as Record<string, unknown>), undefined)
  }
})
