import assert from 'node:assert/strict'
import { test } from 'node:test'
import { SpiffeIdError } from '../../src/spiffe/errors.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'

const valid: [input: string, td: string, path: string][] = [
  ['spiffe://example.org', 'example.org', ''],
  ['spiffe://example.org/workload', 'example.org', '/workload'],
  ['spiffe://example.org/ns/prod/sa/api', 'example.org', '/ns/prod/sa/api'],
  ['spiffe://a-b_c.d/Path-With_CAPS.0', 'a-b_c.d', '/Path-With_CAPS.0'],
  ['spiffe://192.168.0.1/x', '192.168.0.1', '/x'],
  ['spiffe://td/.path', 'td', '/.path'],
  ['spiffe://td/..path', 'td', '/..path'],
  ['spiffe://td/...', 'td', '/...'],
  ['spiffe://td/a./b..', 'td', '/a./b..'],
  [`spiffe://${'a'.repeat(255)}/x`, 'a'.repeat(255), '/x'],
]

const invalid: [input: string, reason: SpiffeIdError['reason']][] = [
  ['', 'empty'],
  ['s', 'scheme'],
  ['spiffe:/', 'scheme'],
  ['spiffe:example.org/x', 'scheme'],
  ['Spiffe://example.org/x', 'scheme'],
  ['SPIFFE://example.org/x', 'scheme'],
  ['https://example.org/x', 'scheme'],
  ['spiffe://', 'trust-domain-missing'],
  ['spiffe:///', 'trust-domain-missing'],
  ['spiffe:///path', 'trust-domain-missing'],
  ['spiffe://Example.org/x', 'trust-domain-char'],
  ['spiffe://EXAMPLE.ORG', 'trust-domain-char'],
  ['spiffe://exa mple.org', 'trust-domain-char'],
  ['spiffe://ex~ample.org', 'trust-domain-char'],
  ['spiffe://[::1]/x', 'trust-domain-char'],
  ['spiffe://ex\u00e4mple.org/x', 'trust-domain-char'],
  ['spiffe://%F0%9F%A4%AF/path', 'percent-encoding'],
  ['spiffe://%62%61%64/path', 'percent-encoding'],
  ['spiffe://example.org:8443/x', 'port'],
  ['spiffe://example.org:/x', 'port'],
  ['spiffe://user@example.org/x', 'userinfo'],
  ['spiffe://user:pw@example.org/x', 'userinfo'],
  ['spiffe://example.org?q=1', 'query-or-fragment'],
  ['spiffe://example.org#frag', 'query-or-fragment'],
  ['spiffe://example.org/x?q=1', 'query-or-fragment'],
  ['spiffe://example.org/x#frag', 'query-or-fragment'],
  ['spiffe://example.org/', 'path-trailing-slash'],
  ['spiffe://example.org/x/', 'path-trailing-slash'],
  ['spiffe://example.org//', 'path-empty-segment'],
  ['spiffe://example.org//x', 'path-empty-segment'],
  ['spiffe://example.org/x//y', 'path-empty-segment'],
  ['spiffe://example.org/.', 'path-dot-segment'],
  ['spiffe://example.org/..', 'path-dot-segment'],
  ['spiffe://example.org/./x', 'path-dot-segment'],
  ['spiffe://example.org/x/./y', 'path-dot-segment'],
  ['spiffe://example.org/x/..', 'path-dot-segment'],
  ['spiffe://example.org/../x', 'path-dot-segment'],
  ['spiffe://example.org/x/../y', 'path-dot-segment'],
  ['spiffe://example.org/x%20y', 'percent-encoding'],
  ['spiffe://example.org/%2e%2e', 'percent-encoding'],
  ['spiffe://example.org/a b', 'path-char'],
  ['spiffe://example.org/a+b', 'path-char'],
  ['spiffe://example.org/a:b', 'path-char'],
  ['spiffe://example.org/\u00e9', 'path-char'],
  [`spiffe://${'a'.repeat(256)}/x`, 'trust-domain-too-long'],
  [`spiffe://example.org/${'a'.repeat(2048)}`, 'too-long'],
]

test('valid SPIFFE IDs parse into trust domain and path and print back unchanged', () => {
  for (const [input, td, path] of valid) {
    const id = SpiffeId.parse(input)
    assert.equal(id.trustDomain.name, td, input)
    assert.equal(id.path, path, input)
    assert.equal(id.toString(), input)
    assert.ok(id.equals(SpiffeId.parse(input)))
    assert.ok(id.memberOf(TrustDomain.parse(td)))
  }
})

test('invalid SPIFFE IDs are ERR_SPIFFE_ID_INVALID with the expected reason', () => {
  for (const [input, reason] of invalid) {
    assert.throws(
      () => SpiffeId.parse(input),
      (err: unknown) => {
        assert.ok(err instanceof SpiffeIdError, input)
        assert.equal(err.code, 'ERR_SPIFFE_ID_INVALID', input)
        assert.equal(err.reason, reason, input)
        assert.ok(err.remedy)
        return true
      },
    )
  }
})

test('every byte value: only [a-z0-9.-_] in the trust domain, plus A-Z in the path', () => {
  for (let c = 0; c < 256; c++) {
    if (c === 0x2f) continue // '/' separates segments: covered by the table above
    const ch = String.fromCharCode(c)
    const tdOk = /[a-z0-9._-]/.test(ch)
    const pathOk = /[a-zA-Z0-9._-]/.test(ch)
    const inTd = `spiffe://tr${ch}ustdomain/path`
    const inPath = `spiffe://trustdomain/pa${ch}th`
    if (tdOk) assert.equal(SpiffeId.parse(inTd).trustDomain.name, `tr${ch}ustdomain`)
    else assert.throws(() => SpiffeId.parse(inTd), { code: 'ERR_SPIFFE_ID_INVALID' }, `td ${c}`)
    if (pathOk) assert.equal(SpiffeId.parse(inPath).path, `/pa${ch}th`)
    else assert.throws(() => SpiffeId.parse(inPath), { code: 'ERR_SPIFFE_ID_INVALID' }, `p ${c}`)
  }
})

test('the 2048-byte and 255-byte limits are inclusive', () => {
  const base = 'spiffe://example.org/'
  const exact = base + 'a'.repeat(2048 - base.length)
  assert.equal(SpiffeId.parse(exact).toString().length, 2048)
  assert.throws(() => SpiffeId.parse(`${exact}a`), { code: 'ERR_SPIFFE_ID_INVALID' })
  assert.equal(TrustDomain.parse('a'.repeat(255)).name.length, 255)
  assert.throws(() => TrustDomain.parse('a'.repeat(256)), { code: 'ERR_SPIFFE_ID_INVALID' })
})

test('TrustDomain.parse takes a name or a SPIFFE ID and rejects the same bad input', () => {
  const td = TrustDomain.parse('example.org')
  assert.equal(td.name, 'example.org')
  assert.equal(td.idString(), 'spiffe://example.org')
  assert.equal(td.toString(), 'example.org')
  assert.ok(td.equals(TrustDomain.parse('spiffe://example.org')))
  assert.ok(td.equals(TrustDomain.parse('spiffe://example.org/some/workload')))
  assert.ok(!td.equals(TrustDomain.parse('example.com')))
  assert.ok(td.id().equals(SpiffeId.parse('spiffe://example.org')))
  for (const bad of ['', 'Example.org', 'example.org:443', 'a@example.org', 'ex%41mple.org']) {
    assert.throws(() => TrustDomain.parse(bad), { code: 'ERR_SPIFFE_ID_INVALID' }, bad)
  }
  assert.throws(() => TrustDomain.parse('spiffe://example.org/x/'), {
    code: 'ERR_SPIFFE_ID_INVALID',
  })
})

test('fromPath and fromSegments build validated IDs', () => {
  const td = TrustDomain.parse('example.org')
  assert.equal(SpiffeId.fromPath(td, '/ns/prod').toString(), 'spiffe://example.org/ns/prod')
  assert.equal(SpiffeId.fromPath(td, '').toString(), 'spiffe://example.org')
  assert.equal(SpiffeId.fromSegments(td, 'ns', 'prod').path, '/ns/prod')
  assert.equal(SpiffeId.fromSegments(td).path, '')
  for (const bad of ['ns', '/ns/', '//x', '/./x', '/a b', '/%41']) {
    assert.throws(() => SpiffeId.fromPath(td, bad), { code: 'ERR_SPIFFE_ID_INVALID' }, bad)
  }
  for (const bad of [[''], ['.'], ['..'], ['a/b'], ['a%20b'], ['ok', '']]) {
    assert.throws(() => SpiffeId.fromSegments(td, ...bad), { code: 'ERR_SPIFFE_ID_INVALID' })
  }
  assert.throws(() => SpiffeId.fromSegments(td, 'a'.repeat(2048)), {
    code: 'ERR_SPIFFE_ID_INVALID',
  })
})

test('equality: path is case-sensitive; memberOf compares trust domains', () => {
  const a = SpiffeId.parse('spiffe://example.org/Workload')
  assert.ok(!a.equals(SpiffeId.parse('spiffe://example.org/workload')))
  assert.ok(!a.equals(SpiffeId.parse('spiffe://example.com/Workload')))
  assert.ok(!a.memberOf(TrustDomain.parse('example.com')))
  assert.equal(JSON.stringify({ id: a }), '{"id":"spiffe://example.org/Workload"}')
})
