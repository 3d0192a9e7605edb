import assert from 'node:assert/strict'
import { test } from 'node:test'
import { rotationTime } from '../../src/agent/cache/rotation.js'

const H = 3600_000
const mid = () => 0.5

test('without an availability target SVIDs rotate at half-life', () => {
  const r = rotationTime(0, 0, 4 * H, mid, 0)
  assert.equal(r.at, 2 * H)
  assert.equal(r.short, false)
})

test('a target under half the life changes nothing; a larger one renews while the target is still left', () => {
  assert.equal(rotationTime(0, 0, 4 * H, mid, 1 * H).at, 2 * H)
  for (const rnd of [0, 0.5, 0.999]) {
    const r = rotationTime(0, 0, 4 * H, () => rnd, 3 * H)
    assert.equal(r.short, false)
    assert.ok(r.at <= 1 * H, `rotates at ${r.at}: an outage starting then must be survivable`)
    assert.ok(r.at >= 1 * H - (1 * H) / 10)
  }
})

test('a target the TTL cannot meet is reported and falls back to half-life (no renewal loop)', () => {
  const r = rotationTime(0, 0, 1 * H, mid, 1 * H)
  assert.equal(r.short, true)
  assert.equal(r.at, H / 2)
})
