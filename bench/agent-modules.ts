/**
 * What the bench's agent process loads, and what each part of it costs in RSS.
 *
 *  1. Trace: a real server and a real agent (bench/wl-server.js roles, the agent with its shipped
 *     V8 flags) started with bench/module-trace.js preloaded; lists every module the agent loaded,
 *     by package (node_modules) or source directory (dist/src/...), with the VmRSS it settled at.
 *  2. Shares: for each npm package the agent imports from its own code, a fresh node
 *     (--expose-gc, full collections before each reading) imports that package's entry alone:
 *     RSS after minus before. Then, in one fresh process, each group in the agent's load order:
 *     the marginal RSS each adds on top of what came before (shared dependencies land on the first).
 *
 * Run: npm run build && node dist/bench/agent-modules.js   (AGENT_MODULES_RUNS, default 3)
 *      node dist/bench/agent-modules.js static <module>... : the static graph of some modules
 *      (e.g. dist/src/cli/main.js's agent path) instead of the bench agent.
 */
import { execFileSync, fork } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { AGENT_V8_FLAGS } from '../src/agent/heap-flags.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const RUNS = Number(process.env.AGENT_MODULES_RUNS ?? 3)
const mib = (n: number) => (n / 2 ** 20).toFixed(1)

interface Trace {
  files: string[]
  /** Bare specifiers the agent's own code (dist/) imported, with the URL each resolved to. */
  entries: Map<string, string>
  builtins: string[]
  rss: number
}

/** The group a loaded file belongs to: its npm package, or its directory under dist/. */
export function groupOf(file: string): string {
  const nm = file.lastIndexOf('node_modules/')
  if (nm >= 0) {
    const parts = file.slice(nm + 'node_modules/'.length).split('/')
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!
  }
  const rel = relative(join(root, 'dist'), file)
  return rel.startsWith('..') ? file : dirname(rel)
}

function readTrace(out: string): Trace {
  const files = new Set<string>()
  const entries = new Map<string, string>()
  let builtins: string[] = []
  let rss = 0
  for (const line of readFileSync(out, 'utf8').split('\n').filter(Boolean)) {
    const r = JSON.parse(line) as {
      esm?: string
      specifier?: string
      parent?: string | null
      cjs?: string[]
      builtins?: string[]
      rss?: number
    }
    if (r.esm?.startsWith('file:')) {
      files.add(fileURLToPath(r.esm))
      const fromOwn = r.parent && !r.parent.includes('/node_modules/')
      const bare = r.specifier && !r.specifier.startsWith('.') && !r.specifier.startsWith('file:')
      if (fromOwn && bare && !r.specifier!.startsWith('node:')) entries.set(r.specifier!, r.esm)
    }
    for (const f of r.cjs ?? []) files.add(f)
    if (r.builtins) builtins = r.builtins
    if (r.rss) rss = r.rss
  }
  return {
    files: [...files].filter((f) => !f.includes('/bench/module-trace')),
    entries,
    builtins,
    rss,
  }
}

/** Runs the bench's server and agent roles, the agent traced; returns what the agent loaded. */
async function traceAgent(): Promise<Trace & { vmRss: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'agent-modules-'))
  const out = join(dir, 'trace.jsonl')
  const role = (args: string[], execArgv: string[]) => {
    const child = fork(join(here, 'wl-server.js'), args, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv,
      env: { ...process.env, MODULE_TRACE_OUT: args[0] === 'agent' ? out : '' },
    })
    const next = () => new Promise<Record<string, unknown>>((r) => child.once('message', r))
    return { child, next }
  }
  try {
    const server = role(['server', dir], [])
    const s = await server.next()
    const agent = role(
      ['agent', dir, String(s.ready), String(s.admin)],
      [
        '--expose-gc',
        ...AGENT_V8_FLAGS,
        '--import',
        pathToFileURL(join(here, 'module-trace.js')).href,
      ],
    )
    await agent.next()
    agent.child.send({ op: 'gc' })
    await agent.next()
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${agent.child.pid}/status`, 'utf8'))
    if (process.env.AGENT_MODULES_SMAPS) smaps(agent.child.pid!)
    const exited = new Promise((r) => agent.child.once('exit', r))
    agent.child.send({ op: 'quit' })
    await exited
    server.child.send({ op: 'quit' })
    await new Promise((r) => server.child.once('exit', r))
    return { ...readTrace(out), vmRss: Number(m?.[1] ?? 0) * 1024 }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** RSS by mapping (the node binary, shared libraries, native addons, anonymous memory). */
function smaps(pid: number): void {
  const by = new Map<string, number>()
  let name = ''
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head) name = head[1] || '[anon]'
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss) by.set(name, (by.get(name) ?? 0) + Number(rss[1]) * 1024)
  }
  console.log('RSS by mapping:')
  for (const [n, b] of [...by].sort((a, c) => c[1] - a[1]).slice(0, 15))
    console.log(`  ${mib(b).padStart(6)} MiB  ${n}`)
}

/** Static graph of some modules: imports them in a traced fresh process (nothing is started). */
function traceStatic(mods: string[]): Trace {
  const dir = mkdtempSync(join(tmpdir(), 'agent-modules-'))
  const out = join(dir, 'trace.jsonl')
  try {
    const src = mods.map((m) => `await import(${JSON.stringify(pathToFileURL(m).href)});`).join('')
    execFileSync(
      process.execPath,
      [
        '--import',
        pathToFileURL(join(here, 'module-trace.js')).href,
        '--input-type=module',
        '-e',
        src,
      ],
      { env: { ...process.env, MODULE_TRACE_OUT: out }, stdio: ['ignore', 'ignore', 'inherit'] },
    )
    return { ...readTrace(out) }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * In a fresh node: RSS after full collections, then after importing each step's URLs, in order;
 * returns the marginal bytes of each step (the first element is node's own RSS).
 */
function measure(steps: string[][], pre: string[] = []): number[] {
  // The first import of an ES module and of a CommonJS one brings in node's loaders (MiBs):
  // both come before the baseline, so no package is charged for them.
  const warm = [pathToFileURL(join(here, 'module-trace-hooks.js')).href, warmCjs]
  const src = `
    for (const u of ${JSON.stringify(warm)}) await import(u)
    const rss = () => { for (let i = 0; i < 3; i++) gc(); return process.memoryUsage().rss }
    const steps = ${JSON.stringify(steps)}
    for (const u of ${JSON.stringify(pre)}) await import(u)
    const out = [rss()]
    for (const s of steps) { for (const u of s) await import(u); out.push(rss()) }
    console.log(JSON.stringify(out))`
  const res = execFileSync(
    process.execPath,
    ['--expose-gc', ...AGENT_V8_FLAGS, '--input-type=module', '-e', src],
    {
      encoding: 'utf8',
      env: { ...process.env, MODULE_TRACE_OUT: '' },
      stdio: ['ignore', 'pipe', 'ignore'],
    },
  )
  const xs = JSON.parse(res.trim().split('\n').pop()!) as number[]
  return xs.map((x, i) => (i === 0 ? x : x - xs[i - 1]!))
}

const warmCjs = pathToFileURL(join(root, 'node_modules/file-uri-to-path/index.js')).href
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const medianRuns = (steps: string[][], pre: string[] = []) => {
  const runs = Array.from({ length: RUNS }, () => measure(steps, pre))
  return runs[0]!.map((_, i) => median(runs.map((r) => r[i]!)))
}

function report(t: Trace, title: string): void {
  const groups = new Map<string, number>()
  for (const f of t.files) groups.set(groupOf(f), (groups.get(groupOf(f)) ?? 0) + 1)
  console.log(`\n${title}: ${t.files.length} files, ${t.builtins.length} built-ins`)
  for (const [g, n] of [...groups].sort((a, b) => b[1] - a[1]))
    console.log(`  ${String(n).padStart(4)}  ${g}`)

  // Each npm package the agent's own code imports, alone in a fresh node.
  // In first-load order; a package that needs an earlier one (x509 needs reflect-metadata) gets
  // the earlier ones loaded before its baseline reading.
  const pkgs = [...t.entries]
  const alone = pkgs.map(([spec, url], i) => {
    try {
      return { spec, delta: medianRuns([[url]])[1]! }
    } catch {
      const pre = pkgs.slice(0, i).map(([, u]) => u)
      return { spec: `${spec} (after the earlier packages)`, delta: medianRuns([[url]], pre)[1]! }
    }
  })
  console.log(
    `\nRSS of each package entry the agent imports, alone in a fresh node (median of ${RUNS}):`,
  )
  for (const a of alone.sort((x, y) => y.delta - x.delta))
    console.log(`  ${mib(a.delta).padStart(6)} MiB  ${a.spec}`)

  // Every loaded ES module file, by group in first-load order: marginal RSS of each group.
  const order: string[] = []
  const byGroup = new Map<string, string[]>()
  for (const f of t.files) {
    if (!f.endsWith('.js') && !f.endsWith('.mjs')) continue
    if (f.includes('/node_modules/')) continue // packages come in through their entries below
    if (f.startsWith(here)) continue // the bench role itself (it runs on import)
    const g = groupOf(f)
    if (!byGroup.has(g)) {
      byGroup.set(g, [])
      order.push(g)
    }
    byGroup.get(g)!.push(pathToFileURL(f).href)
  }
  const steps = [...pkgs.map(([, url]) => [url]), ...order.map((g) => byGroup.get(g)!)]
  const names = [
    ...pkgs.map(([spec]) => spec),
    ...order.map((g) => `${g}/ (${byGroup.get(g)!.length} files)`),
  ]
  const d = medianRuns(steps)
  console.log(
    `\nMarginal RSS, packages first then the agent's own code, one fresh node (median of ${RUNS}):`,
  )
  console.log(`  ${mib(d[0]!).padStart(6)} MiB  node alone`)
  for (const [i, n] of names.entries()) console.log(`  ${mib(d[i + 1]!).padStart(6)} MiB  ${n}`)
  console.log(
    `  ${mib(d.reduce((a, b) => a + b, 0)).padStart(6)} MiB  total (all loaded, nothing run)`,
  )
}

const [mode, ...mods] = process.argv.slice(2)
if (mode === 'static') report(traceStatic(mods), `Static graph of ${mods.join(', ')}`)
else {
  const t = await traceAgent()
  report(t, `Bench agent process (VmRSS ${mib(t.vmRss)} MiB after full GCs, started, idle)`)
}
