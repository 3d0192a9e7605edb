/**
 * FetchJWTSVID's parse/encode memo: a hit is exactly the first answer for that key, and the memo
 * stays within its count and key-size bounds whatever callers send.
 */
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  bytesKey,
  CodecCache,
  JWT_CODEC_CACHE_MAX,
  JWT_CODEC_KEY_MAX_BYTES,
} from '../../src/agent/workload-api/jwt-codec-cache.js'

describe('CodecCache', () => {
  test('a hit returns the first value without making it again', () => {
    const c = new CodecCache<object>()
    let made = 0
    const make = () => ({ n: ++made })
    const a = c.get('k', make)
    assert.equal(c.get('k', make), a)
    assert.equal(made, 1)
    assert.notEqual(c.get('other', make), a)
  })

  test('bounded by count (oldest first) and by key size', () => {
    const c = new CodecCache<number>()
    for (let i = 0; i < JWT_CODEC_CACHE_MAX * 3; i++) c.get(`k${i}`, () => i)
    assert.equal(c.size, JWT_CODEC_CACHE_MAX)
    let made = 0
    assert.equal(
      c.get('k0', () => ++made),
      1,
      'the oldest was dropped',
    )
    const big = 'x'.repeat(JWT_CODEC_KEY_MAX_BYTES + 1)
    c.get(big, () => 7)
    assert.equal(
      c.get(big, () => 8),
      8,
      'an oversized key is served, not kept',
    )
  })

  test('bytesKey is one character per byte: distinct bytes, distinct keys', () => {
    assert.equal(bytesKey(new Uint8Array([0, 255, 128])).length, 3)
    assert.notEqual(bytesKey(new Uint8Array([0xc3, 0xa9])), bytesKey(new Uint8Array([0xe9])))
    const buf = Buffer.from([9, 1, 2, 3])
    assert.equal(bytesKey(buf.subarray(1)), bytesKey(new Uint8Array([1, 2, 3])))
  })
})
