/**
 * A small command tree over node:util parseArgs: groups of subcommands, `--help` on every level,
 * coded errors printed with their remedy. Commands write results to stdout (JSON where asked) and
 * return an exit code; nothing here knows about TPMs or simulators.
 */
import { parseArgs } from 'node:util'
import { parseDuration } from '../common/config.js'
import { isSpiffeEdgeError, UsageError } from '../errors.js'

export type OptionSpec = {
  readonly type: 'string' | 'boolean'
  readonly short?: string
  readonly description: string
  readonly default?: string | boolean
  readonly valueName?: string
  /** Repeatable (e.g. --selector unix:uid:0 --selector unix:gid:0): the value is a string[]. */
  readonly multiple?: boolean
  /** Other names SPIRE uses for it (the admin socket is `-socketPath` on spire-server). */
  readonly aliases?: readonly string[]
}

export type OptionValues = Record<string, string | boolean | string[] | undefined>

export interface Io {
  readonly out: (text: string) => void
  readonly err: (text: string) => void
  readonly env: NodeJS.ProcessEnv
}

export interface Leaf {
  readonly kind: 'command'
  readonly name: string
  readonly summary: string
  /** Extra lines shown under --help. */
  readonly details?: string
  readonly options: Readonly<Record<string, OptionSpec>>
  /** Required positional arguments by name (e.g. ['FILE']); each arrives as values[name]. */
  readonly args?: readonly string[]
  run(values: OptionValues, io: Io): Promise<number>
}

export interface Group {
  readonly kind: 'group'
  readonly name: string
  readonly summary: string
  readonly children: readonly (Leaf | Group)[]
  /** The child run when no subcommand is named (SPIRE: `api fetch` is `api fetch x509`). */
  readonly defaultChild?: string
}

/**
 * Flag spellings: SPIRE writes `-socketPath`, `-spiffeID`; our flags were kebab-case
 * (`--socket-path`). Any spelling with one or two dashes, camelCase or kebab-case, in any
 * letter case, names the same option: names compare lowercased without '-' and '_'.
 */
function flagKey(name: string): string {
  return name.toLowerCase().replace(/[-_]/g, '')
}

/** How --help shows a flag: SPIRE's camelCase with one dash (`-socketPath`, `-spiffeID`). */
const ACRONYMS: Readonly<Record<string, string>> = {
  id: 'ID',
  ids: 'IDs',
  ttl: 'TTL',
  svid: 'SVID',
  jwt: 'JWT',
  dns: 'DNS',
  ek: 'EK',
  ca: 'CA',
}
export function spireSpelling(name: string): string {
  const parts = name.split('-')
  return parts
    .map((w, i) => (i === 0 ? w : (ACRONYMS[w] ?? `${w.charAt(0).toUpperCase()}${w.slice(1)}`)))
    .join('')
}

/**
 * Rewrites every flag in `args` to `--<option name>` so parseArgs sees one spelling. A token
 * that is the value of the string option before it is left alone, even if it starts with '-'.
 */
export function normalizeFlags(
  args: readonly string[],
  options: Readonly<Record<string, { type: 'string' | 'boolean'; aliases?: readonly string[] }>>,
): string[] {
  const byKey = new Map<string, string>()
  for (const [name, o] of Object.entries(options)) {
    for (const spelling of [name, ...(o.aliases ?? [])]) {
      const k = flagKey(spelling)
      const prev = byKey.get(k)
      if (prev !== undefined && prev !== name)
        throw new Error(`options '${prev}' and '${name}' have the same spelling`)
      byKey.set(k, name)
    }
  }
  const out: string[] = []
  let valueNext = false
  for (const a of args) {
    if (valueNext || a === '--' || !a.startsWith('-') || a === '-') {
      valueNext = false
      out.push(a)
      continue
    }
    const body = a.startsWith('--') ? a.slice(2) : a.slice(1)
    const eq = body.indexOf('=')
    const name = eq < 0 ? body : body.slice(0, eq)
    // Single-letter short options (-h) stay as they are.
    const canonical = a.startsWith('--') || name.length > 1 ? byKey.get(flagKey(name)) : undefined
    if (canonical === undefined) {
      out.push(a)
      continue
    }
    out.push(eq < 0 ? `--${canonical}` : `--${canonical}=${body.slice(eq + 1)}`)
    valueNext = eq < 0 && options[canonical]?.type === 'string'
  }
  return out
}

function helpFor(node: Leaf | Group, path: string[]): string {
  const cmd = path.join(' ')
  if (node.kind === 'group') {
    const width = Math.max(...node.children.map((c) => c.name.length))
    const rows = node.children.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`)
    return `${node.summary}\n\nUsage: ${cmd} <command> [options]\n\nCommands:\n${rows.join('\n')}\n\nRun '${cmd} <command> --help' for a command's options.\n`
  }
  const opts = Object.entries(node.options).map(([name, o]) => {
    const flag = `-${spireSpelling(name)}${o.type === 'string' ? ` ${o.valueName ?? name.toUpperCase()}` : ''}`
    const def = o.default === undefined ? '' : ` (default: ${String(o.default)})`
    const aka = o.aliases?.length ? ` (also -${o.aliases.join(', -')})` : ''
    return `  ${flag.padEnd(24)} ${o.description}${def}${aka}`
  })
  if (!('json' in node.options))
    opts.push(
      `  ${'-json'.padEnd(24)} print JSON: ${'output' in node.options ? 'the result (as -output json) and ' : ''}errors on stderr`,
    )
  opts.push(`  ${'-help'.padEnd(24)} show this help`)
  const details = node.details ? `\n${node.details.trimEnd()}\n` : ''
  const args = node.args?.length ? ` ${node.args.join(' ')}` : ''
  return `${node.summary}\n\nUsage: ${cmd}${args} [options]\n\nOptions:\n${opts.join('\n')}\n${details}\nFlags take one or two dashes, camelCase or kebab-case: -socketPath and --socket-path are one flag.\n`
}

const HELP = new Set(['--help', '-help', '-h', 'help'])
const JSON_FLAGS = new Set(['--json', '-json'])
const VERSION = new Set(['--version', '-version', 'version'])

/** Runs argv against the tree; returns the process exit code. Never throws. */
export async function runCli(
  root: Group,
  argv: readonly string[],
  io: Io,
  version?: string,
): Promise<number> {
  const path = [root.name]
  let node: Leaf | Group = root
  let rest = [...argv]
  // --json is -output json: JSON results (SPIRE's shapes) and JSON errors on stderr, either spelling.
  const wantsJson = argv.some(
    (a, i) =>
      JSON_FLAGS.has(a) ||
      /^--?output=json$/i.test(a) ||
      (/^--?output$/i.test(a) && argv[i + 1] === 'json'),
  )
  try {
    if (version !== undefined && argv.length === 1 && VERSION.has(argv[0]!)) {
      io.out(`${root.name} ${version}\n`)
      return 0
    }
    while (node.kind === 'group') {
      const next: string | undefined = rest[0]
      const group: Group = node
      if (
        group.defaultChild !== undefined &&
        (next === undefined || (next.startsWith('-') && !HELP.has(next)))
      ) {
        rest = [group.defaultChild, ...rest]
        continue
      }
      if (next === undefined || HELP.has(next)) {
        io.out(helpFor(node, path))
        return next === undefined ? 2 : 0
      }
      const child: Leaf | Group | undefined = node.children.find((c) => c.name === next)
      if (!child)
        throw new UsageError(
          `unknown command '${[...path, next].join(' ')}'`,
          `run '${path.join(' ')} --help' to list the commands`,
        )
      node = child
      path.push(next)
      rest = rest.slice(1)
    }
    if (rest.some((a) => HELP.has(a) && a !== 'help')) {
      io.out(helpFor(node, path))
      return 0
    }
    const options: Record<
      string,
      { type: 'string' | 'boolean'; short?: string; default?: string | boolean; multiple?: boolean }
    > = {}
    for (const [name, o] of Object.entries(node.options)) {
      options[name] = {
        type: o.type,
        ...(o.short ? { short: o.short } : {}),
        ...(o.default !== undefined ? { default: o.default } : {}),
        ...(o.multiple ? { multiple: true } : {}),
      }
    }
    let values: OptionValues
    let explicitOutput = false
    try {
      // --json is accepted everywhere: it also makes errors machine-readable on stderr.
      const spelled = normalizeFlags(
        rest,
        'json' in node.options ? node.options : { ...node.options, json: { type: 'boolean' } },
      )
      const args = 'json' in options ? spelled : spelled.filter((a) => a !== '--json')
      explicitOutput = spelled.some((a) => a === '--output' || a.startsWith('--output='))
      const parsed = parseArgs({
        args,
        options,
        allowPositionals: (node.args?.length ?? 0) > 0,
        strict: true,
      })
      values = parsed.values as OptionValues
      const names = node.args ?? []
      if (parsed.positionals.length !== names.length) {
        throw new Error(`expected ${names.join(' ')}, got ${parsed.positionals.length} argument(s)`)
      }
      names.forEach((n, i) => {
        values[n] = parsed.positionals[i]
      })
    } catch (err) {
      throw new UsageError(
        `${path.join(' ')}: ${(err as Error).message}`,
        `run '${path.join(' ')} --help'`,
      )
    }
    // --json means the same everywhere: JSON output (where a command has -output) and JSON errors.
    if (wantsJson && 'output' in node.options && !explicitOutput) values.output = 'json'
    return await node.run(values, io)
  } catch (err) {
    reportError(err, io, wantsJson)
    return isSpiffeEdgeError(err) && err.code === 'ERR_USAGE' ? 2 : 1
  }
}

/**
 * A duration flag as SPIRE takes them (`10m`, `1h30m`, `90s`), or plain seconds; `undefined`
 * when absent. Fractions of a second only where `fraction` allows (timeouts).
 */
export function durationOption(
  values: OptionValues,
  name: string,
  opts: { positive?: boolean; fraction?: boolean } = {},
): number | undefined {
  const v = values[name]
  if (v === undefined) return undefined
  const text = typeof v === 'string' ? v.trim() : ''
  let n: number | undefined
  if (/^\d+(\.\d+)?$/.test(text)) n = Number(text)
  else if (/^(\d+(\.\d+)?)ms$/.test(text)) n = Number(text.slice(0, -2)) / 1000
  else n = parseDuration(text)
  if (n === undefined || (!opts.fraction && !Number.isInteger(n)) || (opts.positive && n <= 0)) {
    throw new UsageError(
      `-${spireSpelling(name)} '${String(v)}' is not a duration`,
      `write it as seconds or with a unit: 90, 90s, 10m, 1h30m${opts.fraction ? ', 500ms' : ''}`,
    )
  }
  return n
}

export function reportError(err: unknown, io: Io, json: boolean): void {
  if (isSpiffeEdgeError(err)) {
    if (json) io.err(`${JSON.stringify({ error: err.toJSON() })}\n`)
    else
      io.err(`error[${err.code}]: ${err.message}\n${err.remedy ? `  remedy: ${err.remedy}\n` : ''}`)
    return
  }
  const e = err instanceof Error ? err : new Error(String(err))
  if (json) io.err(`${JSON.stringify({ error: { code: 'ERR_INTERNAL', message: e.message } })}\n`)
  else
    io.err(
      `error[ERR_INTERNAL]: ${e.stack ?? e.message}\n  remedy: this is a bug; please report it with the output above\n`,
    )
}

/** Reads a required string option or throws a usage error naming it. */
export function requireString(values: OptionValues, name: string): string {
  const v = values[name]
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`)
  return v
}

/** Parses an optional port option (1-65535). */
export function optionalPort(values: OptionValues, name = 'port'): number | undefined {
  const v = values[name]
  if (v === undefined) return undefined
  const n = Number(v)
  if (typeof v !== 'string' || !Number.isInteger(n) || n < 1 || n > 65534) {
    throw new UsageError(`--${name} must be a port number between 1 and 65534, got '${String(v)}'`)
  }
  return n
}

/** Parses a hex option (nonces, qualifying data) of 1 to maxBytes bytes. */
export function parseHexOption(value: string, flag: string, maxBytes = 64): Uint8Array {
  if (!/^([0-9a-fA-F]{2})+$/.test(value) || value.length > 2 * maxBytes) {
    throw new UsageError(
      `--${flag} '${value}' is not 1 to ${maxBytes} bytes of hex`,
      `pass --${flag} as even-length hex`,
    )
  }
  return new Uint8Array(Buffer.from(value, 'hex'))
}
