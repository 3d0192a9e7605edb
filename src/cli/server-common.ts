/**
 * What every `spiffe-edge server` admin command shares: the admin socket and output flags, the
 * `leaf` wrapper that applies them, and small value parsers.
 */
import { DEFAULT_ADMIN_SOCKET } from '../common/socket-dir.js'
import { UsageError } from '../errors.js'
import {
  durationOption,
  type Io,
  type Leaf,
  type OptionSpec,
  type OptionValues,
} from './command.js'

export const ADMIN_SOCKET: OptionSpec = {
  type: 'string',
  // Not a parseArgs default: SPIFFE_EDGE_ADMIN_SOCKET sits between the flag and this path.
  description: `the server admin socket (default: ${DEFAULT_ADMIN_SOCKET}; env SPIFFE_EDGE_ADMIN_SOCKET)`,
  valueName: 'PATH',
  aliases: ['socketPath'],
}
export const JSON_FLAG: OptionSpec = {
  type: 'boolean',
  description: 'the same as -output json',
}
export const OUTPUT: OptionSpec = {
  type: 'string',
  description: "pretty (default) or json: SPIRE's API message JSON, errors as JSON on stderr",
  valueName: 'FORMAT',
}

export function socketOf(values: OptionValues, io: Io): string {
  const v = values['admin-socket']
  if (typeof v === 'string' && v !== '') return v
  return io.env.SPIFFE_EDGE_ADMIN_SOCKET || DEFAULT_ADMIN_SOCKET
}

export const list = (v: string | boolean | string[] | undefined): string[] =>
  Array.isArray(v) ? v : typeof v === 'string' ? [v] : []

/** SPIRE's selector form: type:value, where the value may itself contain colons. */
/** SPIRE's superset match for `-selector` filters: every wanted selector is among `have`. */
export function hasAllSelectors(
  have: readonly { type: string; value: string }[],
  want: readonly { type: string; value: string }[],
): boolean {
  return want.every((s) => have.some((x) => x.type === s.type && x.value === s.value))
}

export function parseSelector(s: string): { type: string; value: string } {
  const i = s.indexOf(':')
  if (i <= 0 || i === s.length - 1) {
    throw new UsageError(`selector '${s}' is not type:value`, 'write selectors as unix:uid:1000')
  }
  return { type: s.slice(0, i), value: s.slice(i + 1) }
}

/** A point in time as unix seconds (entry expiry). */
export function unixSeconds(v: string | boolean | string[] | undefined, flag: string): number {
  const n = Number(v)
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n)) {
    throw new UsageError(`-${flag} must be unix seconds, got '${String(v)}'`)
  }
  return n
}

/** A TTL flag: seconds or a duration (`10m`, `1h`); 0 when absent (the server's default). */
export function seconds(values: OptionValues, flag: string): number {
  return durationOption(values, flag) ?? 0
}

export function leaf(
  name: string,
  summary: string,
  options: Record<string, OptionSpec>,
  run: (values: OptionValues, io: Io, socket: string) => Promise<number>,
): Leaf {
  return {
    kind: 'command',
    name,
    summary,
    options: { ...options, 'admin-socket': ADMIN_SOCKET, json: JSON_FLAG, output: OUTPUT },
    run: (values, io) => {
      // SPIRE spells it -output json; --json is an alias (same shapes, see spire-json.ts).
      if (values.output !== undefined && values.output !== 'pretty' && values.output !== 'json') {
        throw new UsageError(`--output must be pretty or json, got '${String(values.output)}'`)
      }
      return run(
        { ...values, json: values.json === true || values.output === 'json' },
        io,
        socketOf(values, io),
      )
    },
  }
}
