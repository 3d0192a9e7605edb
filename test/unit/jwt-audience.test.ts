/**
 * FetchJWTSVID's audience check in the agent's JWT cache: remembered per frozen request array
 * only, so a mutable array changed after a first check is checked again, and a bad audience
 * is never remembered as good.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { checkAudience } from '../../src/agent/cache/jwt-svids.js'
import { GrpcStatus, WorkloadStatusError } from '../../src/agent/workload-api/errors.js'
import { JWT_AUDIENCE_LIMITS } from '../../src/agent/workload-api/types.js'

const invalid = (fn: () => unknown) =>
  assert.throws(
    fn,
    (e: unknown) => e instanceof WorkloadStatusError && e.status === GrpcStatus.INVALID_ARGUMENT,
  )

describe('checkAudience', () => {
  test('unique, sorted, and the cache key part joined by NUL', () => {
    const a = checkAudience(['b', 'a', 'b'])
    assert.deepEqual(a.aud, ['a', 'b'])
    assert.equal(a.key, '["a","b"]')
    assert.ok(Object.isFrozen(a.aud))
  })

  test('a frozen array is checked once; the same answer comes back', () => {
    const req = Object.freeze(['x', 'y'])
    assert.equal(checkAudience(req), checkAudience(req))
  })

  test('a mutable array is checked on every call (it may have changed)', () => {
    const req = ['ok']
    assert.deepEqual(checkAudience(req).aud, ['ok'])
    req.push('')
    invalid(() => checkAudience(req))
    req.length = 0
    for (let i = 0; i <= JWT_AUDIENCE_LIMITS.maxCount; i++) req.push(`a${i}`)
    invalid(() => checkAudience(req))
  })

  test('bad audiences are refused every time, frozen or not', () => {
    const empty = Object.freeze([] as string[])
    invalid(() => checkAudience(empty))
    invalid(() => checkAudience(empty))
    const long = Object.freeze(['x'.repeat(JWT_AUDIENCE_LIMITS.maxBytes + 1)])
    invalid(() => checkAudience(long))
    invalid(() => checkAudience(long))
  })
})

test('audience sets that differ never share a cache key (an audience may hold NUL)', () => {
  assert.notEqual(checkAudience(['a\u0000b']).key, checkAudience(['a', 'b']).key)
  assert.equal(checkAudience(['b', 'a', 'b']).key, checkAudience(['a', 'b']).key)
})
