/**
 * When an SVID rotates. Without an availability target: SPIRE's half-life rule (halfLife in
 * identity.ts). With one (SPIRE's `availability_target`): an SVID is renewed while it still has
 * at least the target left, so an outage of that length, starting right after any successful
 * renewal, never leaves a workload (or the agent) without a valid SVID. Half-life already gives
 * that when the target is under half the life; above, renewal comes earlier. A target the
 * server's TTL cannot meet (over 90% of the life) is reported and half-life is used: renewing
 * sooner would not make such an SVID outlive the target, only load the server (and, for the agent
 * SVID of a TPM agent, re-attest in a loop).
 */
/**
 * SPIRE's half-life rule: rotate when the remaining life falls under half, ±10% jitter. The life
 * counts from when we got the certificate, not its notBefore: servers backdate notBefore (ours by
 * 10 s), which would make a short-lived SVID look half spent on arrival and rotate in a loop.
 */
export function halfLife(now: number, notBefore: number, notAfter: number, random: () => number) {
  const half = (notAfter - Math.max(notBefore, now)) / 2
  const jittered = half + (random() * 2 - 1) * (half / 10)
  return notAfter - jittered
}

export interface Rotation {
  readonly at: number
  /** The SVID's life is too short for the availability target. */
  readonly short: boolean
}

export function rotationTime(
  now: number,
  notBefore: number,
  notAfter: number,
  random: () => number,
  availabilityTargetMs: number,
): Rotation {
  const half = halfLife(now, notBefore, notAfter, random)
  const life = notAfter - Math.max(notBefore, now)
  const target = availabilityTargetMs
  if (target <= 0 || target <= life / 2) return { at: half, short: false }
  if (target <= life * 0.9) {
    // Jitter only earlier, so the target always holds; spread over a tenth of the slack.
    return { at: notAfter - target - random() * ((life - target) / 10), short: false }
  }
  return { at: half, short: true }
}
