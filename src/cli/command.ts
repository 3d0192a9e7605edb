/**
 * A small command tree over node:util parseArgs: groups of subcommands, `--help` on every level,
 * coded errors printed with their remedy. Commands write results to stdout (JSON where asked) and
 * return an exit code; nothing here knows about TPMs or simulators.
 */
import { parseArgs } from 'node:util'
import { isSpiffeEdgeError, UsageError } from '../errors.js'

export type OptionSpec = {
  readonly type: 'string' | 'boolean'
  readonly short?: string
  readonly description: string
  readonly default?: string | boolean
  readonly valueName?: string
  /** Repeatable (e.g. --selector unix:uid:0 --selector unix:gid:0): the value is a string[]. */
  readonly multiple?: boolean
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
}

function helpFor(node: Leaf | Group, path: string[]): string {
  const cmd = path.join(' ')
  if (node.kind === 'group') {
    const width = Math.max(...node.children.map((c) => c.name.length))
    const rows = node.children.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`)
    return `${node.summary}\n\nUsage: ${cmd} <command> [options]\n\nCommands:\n${rows.join('\n')}\n\nRun '${cmd} <command> --help' for a command's options.\n`
  }
  const opts = Object.entries(node.options).map(([name, o]) => {
    const flag = `--${name}${o.type === 'string' ? ` ${o.valueName ?? name.toUpperCase()}` : ''}`
    const def = o.default === undefined ? '' : ` (default: ${String(o.default)})`
    return `  ${flag.padEnd(24)} ${o.description}${def}`
  })
  if (!('json' in node.options))
    opts.push(`  ${'--json'.padEnd(24)} print errors as JSON on stderr`)
  opts.push(`  ${'--help'.padEnd(24)} show this help`)
  const details = node.details ? `\n${node.details.trimEnd()}\n` : ''
  const args = node.args?.length ? ` ${node.args.join(' ')}` : ''
  return `${node.summary}\n\nUsage: ${cmd}${args} [options]\n\nOptions:\n${opts.join('\n')}\n${details}`
}

/** Runs argv against the tree; returns the process exit code. Never throws. */
export async function runCli(root: Group, argv: readonly string[], io: Io): Promise<number> {
  const path = [root.name]
  let node: Leaf | Group = root
  let rest = [...argv]
  const wantsJson = argv.includes('--json')
  try {
    while (node.kind === 'group') {
      const next: string | undefined = rest[0]
      if (next === undefined || next === '--help' || next === '-h' || next === 'help') {
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
    if (rest.includes('--help') || rest.includes('-h')) {
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
    try {
      // --json is accepted everywhere: it also makes errors machine-readable on stderr.
      const args = 'json' in options ? rest : rest.filter((a) => a !== '--json')
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
    return await node.run(values, io)
  } catch (err) {
    reportError(err, io, wantsJson)
    return isSpiffeEdgeError(err) && err.code === 'ERR_USAGE' ? 2 : 1
  }
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
