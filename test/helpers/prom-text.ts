/** Reads one sample from Prometheus text exposition (what a scraper sees). */
export function sample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const got: Record<string, string> = {}
    for (const kv of (m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g))
      got[kv[1]!] = kv[2]!
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3])
  }
  return undefined
}

/** Every label value a metric family carries for `label` (to check labels stay bounded). */
export function labelValues(text: string, prefix: string, label: string): Set<string> {
  const out = new Set<string>()
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue
    const m = new RegExp(`${label}="((?:[^"\\\\]|\\\\.)*)"`).exec(line)
    if (m) out.add(m[1]!)
  }
  return out
}
