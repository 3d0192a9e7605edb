import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  authorizeAny,
  authorizeID,
  authorizeMemberOf,
  authorizeOneOf,
  SpiffeId,
} from '../../src/index.js'

const id = (s: string) => SpiffeId.parse(s)

test('authorizers: any, one ID, one of several, members of a trust domain', () => {
  assert.equal(authorizeAny()(id('spiffe://x.test/a')), true)
  assert.equal(authorizeID('spiffe://x.test/a')(id('spiffe://x.test/a')), true)
  assert.equal(authorizeID('spiffe://x.test/a')(id('spiffe://x.test/a/b')), false)
  assert.equal(authorizeID('spiffe://x.test/a')(id('spiffe://y.test/a')), false)
  const oneOf = authorizeOneOf('spiffe://x.test/a', id('spiffe://y.test/b'))
  assert.equal(oneOf(id('spiffe://y.test/b')), true)
  assert.equal(oneOf(id('spiffe://x.test/b')), false)
  assert.equal(authorizeMemberOf('x.test')(id('spiffe://x.test/any/path')), true)
  assert.equal(authorizeMemberOf('x.test')(id('spiffe://x.testing/a')), false)
})

test('an authorizer built from a malformed ID fails at once with a code', () => {
  assert.throws(() => authorizeID('spiffe://X.test/a'), { code: 'ERR_SPIFFE_ID_INVALID' })
  assert.throws(() => authorizeMemberOf('not a td'), { code: 'ERR_SPIFFE_ID_INVALID' })
})
