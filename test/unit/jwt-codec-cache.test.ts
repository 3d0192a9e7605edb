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
  LastOne,
  sameBytes,
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

describe('LastOne', () => {
  test('answers the last input again without make(); another input is made anew', () => {
    const l = new LastOne<Uint8Array, { n: number }>(sameBytes)
    let made = 0
    const make = () => ({ n: ++made })
    const a = l.get(Uint8Array.of(1, 2), make)
    assert.equal(l.get(Uint8Array.of(1, 2), make), a)
    assert.equal(made, 1)
    const b = l.get(Uint8Array.of(1, 3), make)
    assert.notEqual(b, a)
    assert.equal(l.get(Uint8Array.of(1), make).n, 3)
  })

  test('keeps a copy: a caller reusing its input buffer does not change what was remembered', () => {
    const l = new LastOne<Uint8Array, string>(sameBytes)
    const buf = Uint8Array.of(7, 7)
    assert.equal(
      l.get(
        buf,
        () => 'seven',
        (b) => Uint8Array.from(b),
      ),
      'seven',
    )
    buf[1] = 8
    assert.equal(
      l.get(buf, () => 'seven-eight'),
      'seven-eight',
    )
    assert.equal(
      l.get(Uint8Array.of(7, 8), () => 'again'),
      'seven-eight',
    )
  })

  test('a make() that throws is not remembered', () => {
    const l = new LastOne<string, number>((a, b) => a === b)
    assert.equal(
      l.get('ok', () => 1),
      1,
    )
    assert.throws(() =>
      l.get('bad', () => {
        throw new Error('no')
      }),
    )
    assert.throws(
      () =>
        l.get('bad', () => {
          throw new Error('still no')
        }),
      /still no/,
    )
    assert.equal(
      l.get('ok', () => 2),
      1,
    )
  })
})
