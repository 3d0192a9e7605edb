/**
 * Pure parsers for the /proc and /etc text the workload attestors read, kept apart from the I/O
 * so unit tests can feed fixture text.
 */

export interface ProcStatus {
  /** Effective uid and gid (the second value of Uid:/Gid:, as SPIRE uses). */
  readonly uid: number
  readonly gid: number
  /** Supplementary group ids (Groups:). */
  readonly groups: readonly number[]
}

/** Space, tab and the other ASCII line whitespace (\t \n \v \f \r). */
const isSpace = (c: number) => c === 32 || (c >= 9 && c <= 13)

/** The ids of one status line's value. A scan, not split/filter/map: it runs on every call. */
function ids(line: string | undefined, what: string): number[] {
  if (line === undefined) throw new Error(`no ${what}: line in /proc/<pid>/status`)
  const values: number[] = []
  const n = line.length
  let i = 0
  for (;;) {
    while (i < n && isSpace(line.charCodeAt(i))) i++
    if (i >= n) return values
    const start = i
    while (i < n && !isSpace(line.charCodeAt(i))) i++
    const v = Number(line.slice(start, i))
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new Error(`malformed ${what}: line in /proc/<pid>/status`)
    }
    values.push(v)
  }
}

/** The value of the first `name:` line, without splitting the whole file (~55 lines). */
function statusLine(text: string, name: string): string | undefined {
  const key = `${name}:`
  let at = 0
  if (!text.startsWith(key)) {
    const nl = text.indexOf(`\n${key}`)
    if (nl < 0) return undefined
    at = nl + 1
  }
  const end = text.indexOf('\n', at)
  return text.slice(at + key.length, end < 0 ? text.length : end)
}

export function parseProcStatus(text: string): ProcStatus {
  // Only the three lines we use; the attestor reads this file on every call.
  const uids = ids(statusLine(text, 'Uid'), 'Uid')
  const gids = ids(statusLine(text, 'Gid'), 'Gid')
  // Real, effective, saved, filesystem: attest the effective id when there is more than one.
  const pick = (v: number[], what: string): number => {
    const id = v.length > 1 ? v[1] : v[0]
    if (id === undefined) throw new Error(`empty ${what}: line in /proc/<pid>/status`)
    return id
  }
  const groupsLine = statusLine(text, 'Groups')
  const groups = groupsLine === undefined ? [] : ids(groupsLine, 'Groups')
  return { uid: pick(uids, 'Uid'), gid: pick(gids, 'Gid'), groups }
}

/** id → name from /etc/passwd or /etc/group text (name:x:id:...); the first entry wins. */
export function parseIdNames(text: string): Map<number, string> {
  const out = new Map<number, string>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const f = line.split(':')
    const name = f[0]
    const id = Number(f[2])
    if (name && f[2] !== '' && Number.isSafeInteger(id) && !out.has(id)) out.set(id, name)
  }
  return out
}

export interface CgroupEntry {
  readonly hierarchy: string
  readonly controllers: string
  readonly path: string
}

/** /proc/<pid>/cgroup lines: hierarchy-id:controllers:path (v2 is 0::/path). */
export function parseCgroups(text: string): CgroupEntry[] {
  const out: CgroupEntry[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    const a = line.indexOf(':')
    const b = a < 0 ? -1 : line.indexOf(':', a + 1)
    if (a < 0 || b < 0) continue
    out.push({
      hierarchy: line.slice(0, a),
      controllers: line.slice(a + 1, b),
      path: line.slice(b + 1),
    })
  }
  return out
}

const UNIT = /\.(service|scope)$/

/**
 * The systemd unit of a process: the last path component ending in .service or .scope, taken
 * from the systemd hierarchy (cgroup v2 "0::", or v1 "name=systemd"), else from any line.
 */
export function systemdUnitFromCgroups(entries: readonly CgroupEntry[]): string | undefined {
  const preferred = entries.filter(
    (e) => (e.hierarchy === '0' && e.controllers === '') || e.controllers === 'name=systemd',
  )
  for (const list of [preferred, entries]) {
    for (const e of list) {
      const unit = e.path
        .split('/')
        .filter((c) => UNIT.test(c))
        .at(-1)
      if (unit !== undefined) return unit
    }
  }
  return undefined
}

const CONTAINER_PATTERNS: readonly RegExp[] = [
  // systemd cgroup driver: .../docker-<id>.scope
  /(?:^|\/)docker-([0-9a-f]{64})\.scope(?:\/|$)/,
  // cgroupfs driver: /docker/<id>
  /(?:^|\/)docker\/([0-9a-f]{64})(?:\/|$)/,
]

/** A Docker container id from cgroup paths, or undefined when the process is not in one. */
export function dockerContainerIdFromCgroups(entries: readonly CgroupEntry[]): string | undefined {
  for (const e of entries) {
    for (const re of CONTAINER_PATTERNS) {
      const m = re.exec(e.path)
      if (m?.[1] !== undefined) return m[1]
    }
  }
  return undefined
}
