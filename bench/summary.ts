/**
 * One line per measured goal, in a form bench/run-all.ts collects into the summary table:
 *   SUMMARY {"bench":..., "case":..., "value":..., "goal":..., "met":...}
 * `value` is a ratio (or a rate) and `goal` says which way it must be (e.g. "<= 1.2x").
 */
export interface Summary {
  readonly bench: string
  readonly case: string
  readonly value: number
  /** '<=' or '>=' and the bound, as printed. */
  readonly op: '<=' | '>='
  readonly bound: number
  readonly unit: string
}

export function summary(s: Summary): void {
  const met = s.op === '<=' ? s.value <= s.bound : s.value >= s.bound
  console.log(`SUMMARY ${JSON.stringify({ ...s, met })}`)
}

export const pct = (xs: readonly number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN
}
