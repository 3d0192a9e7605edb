import assert from 'node:assert/strict'
import { test } from 'node:test'
import { rotationTime } from '../../src/agent/cache/rotation.js'
import { OUTAGE_PROBE_MAX_MS, SyncSchedule } from '../../src/agent/cache/schedule.js'
import { parseAgentConfig } from '../../src/agent/config.js'

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

test('while an SVID is overdue the sync loop probes the server at least every 5 s, whatever the backoff', () => {
  const now = 1_000_000
  const make = (overdue: number | undefined, agentNotAfter = now + 3600_000) =>
    new SyncSchedule({
      intervalMs: 60_000,
      now: () => now,
      random: () => 0.5,
      sync: async () => undefined,
      failures: () => 10,
      agent: () => ({
        spiffeId: 'spiffe://example.org/a',
        chain: [],
        key: undefined as never,
        notBefore: now - 1000,
        notAfter: agentNotAfter,
        rotateAt: agentNotAfter - 1000,
        reattestable: true,
      }),
      nextRotation: () => undefined,
      overdueExpiry: () => overdue,
    })
  const delay = (s: SyncSchedule, base: number) =>
    (s as unknown as { nextDelay(b: number): number }).nextDelay(base)
  // Nothing overdue: the backoff stands (an 8-minute retry is fine with nothing at stake).
  assert.equal(delay(make(undefined), 480_000), 480_000)
  // A workload SVID past its rotation with an hour left: probe every 5 s.
  assert.equal(delay(make(now + 3600_000), 480_000), OUTAGE_PROBE_MAX_MS)
  // With 8 s left: a quarter of it.
  assert.equal(delay(make(now + 8000), 480_000), 2000)
  // Already expired (an outage outlived it): the outage rate, not twice a second.
  assert.equal(delay(make(now - 1), 480_000), OUTAGE_PROBE_MAX_MS)
  // An expired agent SVID too.
  assert.equal(delay(make(undefined, now - 1), 480_000), OUTAGE_PROBE_MAX_MS)
})

test('availability_target parses as a duration; off by default', () => {
  const base =
    '[agent]\ntrust_domain = "example.org"\ninsecure_bootstrap = true\n[plugins.WorkloadAttestor.unix]\n'
  assert.equal(parseAgentConfig(base, 'a.conf').availabilityTargetSeconds, 0)
  const c = parseAgentConfig(
    base.replace('[agent]\n', '[agent]\navailability_target = "24h"\n'),
    'a.conf',
  )
  assert.equal(c.availabilityTargetSeconds, 86_400)
  assert.throws(
    () =>
      parseAgentConfig(
        base.replace('[agent]\n', '[agent]\navailability_target = "soon"\n'),
        'a.conf',
      ),
    (e: { code?: string; message: string }) =>
      e.code === 'ERR_CONFIG' && /availability_target/.test(e.message),
  )
})
