import assert from 'node:assert/strict'
import { test } from 'node:test'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { KEY_TYPES, type Signer } from '../../src/keymanager/types.js'
import { JwtBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { mintJwtSvid, validateJwtSvid } from '../../src/spiffe/jwt-svid.js'

const td = TrustDomain.parse('example.org')
const km = new MemoryKeyManager()
const signer = await km.generateKey('jwt-ec', 'ec-p256')
const stranger = await km.generateKey('jwt-stranger', 'ec-p256')
const sub = SpiffeId.parse('spiffe://example.org/ns/prod/sa/api')
const iat = new Date('2026-06-01T00:00:00Z')
const exp = new Date(iat.getTime() + 5 * 60_000)
const during = new Date(iat.getTime() + 60_000)

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')

/** Signs arbitrary header and claims, for tokens mintJwtSvid refuses to make. */
async function raw(header: object, claims: object, s: Signer = signer): Promise<string> {
  const input = `${b64(header)}.${b64(claims)}`
  const sig = await s.sign(new TextEncoder().encode(input))
  return `${input}.${Buffer.from(sig).toString('base64url')}`
}

function opts(
  keys: Map<string, Signer>,
  over: Partial<Parameters<typeof validateJwtSvid>[1]> = {},
) {
  const bundle = new JwtBundle(td, new Map([...keys].map(([kid, s]) => [kid, s.publicKey])))
  return {
    audience: 'spiffe://example.org/db',
    bundles: (t: TrustDomain) => (t.equals(td) ? bundle : undefined),
    now: during,
    ...over,
  }
}

const mint = (over: Partial<Parameters<typeof mintJwtSvid>[0]> = {}) =>
  mintJwtSvid({
    spiffeId: sub,
    audience: ['spiffe://example.org/db'],
    signer,
    kid: 'k1',
    issuedAt: iat,
    expiresAt: exp,
    ...over,
  })

test('minted JWT-SVIDs carry only alg, kid, typ and sub, aud[], exp, iat', async () => {
  const token = await mint()
  assert.deepEqual(decodeProtectedHeader(token), { alg: 'ES256', kid: 'k1', typ: 'JWT' })
  assert.deepEqual(decodeJwt(token), {
    sub: sub.toString(),
    aud: ['spiffe://example.org/db'],
    exp: exp.getTime() / 1000,
    iat: iat.getTime() / 1000,
  })
})

for (const type of KEY_TYPES) {
  test(`a ${type} JWT-SVID validates`, async () => {
    const s = await km.generateKey(`jwt-${type}`, type)
    const token = await mint({ signer: s, kid: type, audience: ['a', 'spiffe://example.org/db'] })
    const r = await validateJwtSvid(token, opts(new Map([[type, s]])))
    assert.ok(r.spiffeId.equals(sub))
    assert.equal(r.expiresAt.getTime(), exp.getTime())
    assert.deepEqual(r.claims.aud, ['a', 'spiffe://example.org/db'])
  })
}

test('a string aud, typ JOSE or no typ, and extra claims are accepted', async () => {
  const keys = new Map([['k1', signer as Signer]])
  const claims = { sub: sub.toString(), aud: 'spiffe://example.org/db', exp: exp.getTime() / 1000 }
  for (const header of [
    { alg: 'ES256', kid: 'k1' },
    { alg: 'ES256', kid: 'k1', typ: 'JOSE' },
  ]) {
    assert.ok(await validateJwtSvid(await raw(header, claims), opts(keys)))
  }
  const t = await mint({ extraClaims: { iss: 'https://issuer', jti: 'x' } })
  assert.equal((await validateJwtSvid(t, opts(keys))).claims.iss, 'https://issuer')
})

test('exp leeway defaults to 60 s and is configurable', async () => {
  const keys = new Map([['k1', signer as Signer]])
  const token = await mint()
  const late = new Date(exp.getTime() + 30_000)
  assert.ok(await validateJwtSvid(token, opts(keys, { now: late })))
  await assert.rejects(validateJwtSvid(token, opts(keys, { now: late, leewaySeconds: 0 })), {
    code: 'ERR_SVID_INVALID',
  })
  await assert.rejects(
    validateJwtSvid(token, opts(keys, { now: new Date(exp.getTime() + 61_000) })),
    { code: 'ERR_SVID_INVALID' },
  )
})

test('validation rejects bad tokens with ERR_SVID_INVALID', async () => {
  const keys = new Map<string, Signer>([['k1', signer]])
  const good = await mint()
  const [h, p, sig] = good.split('.') as [string, string, string]
  const claims = decodeJwt(good)
  const hdr = { alg: 'ES256', kid: 'k1', typ: 'JWT' }
  const rsa = await km.generateKey('jwt-rsa-x', 'rsa-2048')
  const cases: [string, string, ReturnType<typeof opts>?][] = [
    ['wrong audience', good, opts(keys, { audience: 'spiffe://example.org/other' })],
    ['expired', good, opts(keys, { now: new Date(exp.getTime() + 3600_000) })],
    ['unknown kid', await mint({ kid: 'k2' })],
    ['signed by a key not in the bundle', await mint({ signer: stranger })],
    ['no bundle for the trust domain', good, opts(keys, { bundles: () => undefined })],
    [
      'bundle of another trust domain',
      good,
      opts(keys, { bundles: () => new JwtBundle(TrustDomain.parse('other.org'), new Map()) }),
    ],
    ['alg none', `${b64({ alg: 'none', kid: 'k1' })}.${p}.`],
    ['alg HS256', `${b64({ alg: 'HS256', kid: 'k1', typ: 'JWT' })}.${p}.${sig}`],
    ['alg EdDSA', `${b64({ alg: 'EdDSA', kid: 'k1', typ: 'JWT' })}.${p}.${sig}`],
    ['alg ES384 on a P-256 key', await raw({ ...hdr, alg: 'ES384' }, claims)],
    ['alg RS256 on an EC key', await raw({ ...hdr, alg: 'RS256' }, claims, rsa)],
    ['tampered payload', `${h}.${b64({ ...claims, sub: 'spiffe://example.org/admin' })}.${sig}`],
    ['tampered signature', `${h}.${p}.${sig.slice(0, -4)}AAAA`],
    ['sub not a SPIFFE ID', await raw(hdr, { ...claims, sub: 'admin' })],
    ['sub with a bad SPIFFE ID', await raw(hdr, { ...claims, sub: 'spiffe://Example.org/x' })],
    ['no sub', await raw(hdr, { ...claims, sub: undefined })],
    ['no kid', await raw({ alg: 'ES256', typ: 'JWT' }, claims)],
    ['typ not JWT/JOSE', await raw({ ...hdr, typ: 'at+jwt' }, claims)],
    ['no exp', await raw(hdr, { ...claims, exp: undefined })],
    ['no aud', await raw(hdr, { ...claims, aud: undefined })],
    ['empty aud', await raw(hdr, { ...claims, aud: [] })],
    ['nbf in the future', await raw(hdr, { ...claims, nbf: claims.exp })],
    ['not compact', JSON.stringify({ protected: h, payload: p, signature: sig })],
    ['two parts', `${h}.${p}`],
    ['garbage', 'a.b.c'],
    ['unknown crit header', await raw({ ...hdr, crit: ['exp2'], exp2: 1 }, claims)],
  ]
  for (const [name, token, o] of cases) {
    await assert.rejects(
      validateJwtSvid(token, o ?? opts(keys)),
      { code: 'ERR_SVID_INVALID' },
      name,
    )
  }
})

test('minting refuses bad input', async () => {
  const bad: [string, () => Promise<string>][] = [
    ['no audience', () => mint({ audience: [] })],
    ['empty audience', () => mint({ audience: [''] })],
    ['no kid', () => mint({ kid: '' })],
    ['root ID', () => mint({ spiffeId: td.id() })],
    ['exp before iat', () => mint({ expiresAt: iat })],
    ['reserved extra claim', () => mint({ extraClaims: { sub: 'x' } })],
  ]
  for (const [name, f] of bad) await assert.rejects(f(), { code: 'ERR_SVID_INVALID' }, name)
})
