/**
 * Config reading that reports every problem at once and refuses unknown keys (a typo must not
 * silently fall back to a default). Values come from TOML tables; paths are resolved against the
 * config file's folder so a config works as-is wherever it is copied with its data.
 */
import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { parse as parseToml } from 'smol-toml'
import { SpiffeEdgeError } from '../errors.js'
import { LOG_LEVELS, type LogConfig } from './log.js'

export type Table = Record<string, unknown>

export class ConfigError extends SpiffeEdgeError {
  readonly problems: readonly string[]

  constructor(source: string, problems: readonly string[]) {
    super(
      'ERR_CONFIG',
      `${source}: ${problems.length} problem(s):\n  - ${problems.join('\n  - ')}`,
      {
        remedy: 'fix the listed keys; see examples/local for a working config',
      },
    )
    this.problems = problems
  }
}

export class ConfigReader {
  readonly problems: string[] = []
  private readonly baseDir: string

  constructor(baseDir: string) {
    this.baseDir = baseDir
  }

  table(parent: Table, key: string, path: string, required = false): Table | undefined {
    const v = parent[key]
    if (v === undefined) {
      if (required) this.problems.push(`${path}: missing table`)
      return undefined
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.problems.push(`${path}: must be a table`)
      return undefined
    }
    return v as Table
  }

  /** Records every key of `t` that is not in `known`. */
  known(t: Table | undefined, known: readonly string[], path: string): void {
    if (!t) return
    for (const k of Object.keys(t)) {
      if (!known.includes(k)) this.problems.push(`${path}.${k}: unknown key`)
    }
  }

  string(t: Table | undefined, key: string, path: string, def?: string): string | undefined {
    const v = t?.[key]
    if (v === undefined) {
      if (def === undefined) this.problems.push(`${path}.${key}: required`)
      return def
    }
    if (typeof v !== 'string' || v === '') {
      this.problems.push(`${path}.${key}: must be a non-empty string`)
      return def
    }
    return v
  }

  optionalString(t: Table | undefined, key: string, path: string): string | undefined {
    return t?.[key] === undefined ? undefined : this.string(t, key, path)
  }

  path(t: Table | undefined, key: string, path: string, def?: string): string | undefined {
    const v = this.string(t, key, path, def)
    return v === undefined ? undefined : isAbsolute(v) ? v : resolve(this.baseDir, v)
  }

  int(
    t: Table | undefined,
    key: string,
    path: string,
    def: number,
    min: number,
    max: number,
  ): number {
    const v = t?.[key]
    if (v === undefined) return def
    const n = typeof v === 'bigint' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      this.problems.push(`${path}.${key}: must be an integer from ${min} to ${max}`)
      return def
    }
    return n
  }

  /** log_level (any case, as SPIRE's "DEBUG"), log_format json|text, log_file. */
  log(t: Table | undefined, path: string): LogConfig {
    const pick = <T extends string>(key: string, values: readonly T[], def: T): T => {
      const v = t?.[key]
      if (v === undefined) return def
      const lower = typeof v === 'string' ? v.toLowerCase() : undefined
      if (lower === undefined || !values.includes(lower as T)) {
        this.problems.push(`${path}.${key}: must be one of ${values.join(', ')} (any case)`)
        return def
      }
      return lower as T
    }
    const file = this.optionalString(t, 'log_file', path)
    return {
      level: pick('log_level', LOG_LEVELS, 'info'),
      format: pick('log_format', ['json', 'text'] as const, 'json'),
      ...(file === undefined
        ? {}
        : { file: isAbsolute(file) ? file : resolve(this.baseDir, file) }),
    }
  }

  bool(t: Table | undefined, key: string, path: string, def: boolean): boolean {
    const v = t?.[key]
    if (v === undefined) return def
    if (typeof v !== 'boolean') {
      this.problems.push(`${path}.${key}: must be true or false`)
      return def
    }
    return v
  }

  oneOf<T extends string>(
    t: Table | undefined,
    key: string,
    path: string,
    values: readonly T[],
    def: T,
  ): T {
    const v = t?.[key]
    if (v === undefined) return def
    if (typeof v !== 'string' || !values.includes(v as T)) {
      this.problems.push(`${path}.${key}: must be one of ${values.join(', ')}`)
      return def
    }
    return v as T
  }

  /** Durations like "90s", "5m", "1h30m", "24h"; returns seconds. */
  duration(t: Table | undefined, key: string, path: string, defSeconds: number): number {
    const v = t?.[key]
    if (v === undefined) return defSeconds
    const s = typeof v === 'string' ? parseDuration(v) : undefined
    if (s === undefined || s <= 0) {
      this.problems.push(`${path}.${key}: must be a duration like "90s", "5m" or "24h"`)
      return defSeconds
    }
    return s
  }

  /** Throws one ConfigError naming every problem found. */
  done(source: string): void {
    if (this.problems.length > 0) throw new ConfigError(source, this.problems)
  }
}

const UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86400 }

export function parseDuration(text: string): number | undefined {
  const re = /(\d+)([smhd])/g
  let total = 0
  let consumed = 0
  for (const m of text.matchAll(re)) {
    if (m.index !== consumed) return undefined
    total += Number(m[1]) * UNITS[m[2]!]!
    consumed += m[0].length
  }
  return consumed === text.length && consumed > 0 ? total : undefined
}

/** Parses TOML text into a table, or one ConfigError. */
export function parseTomlConfig(
  text: string,
  source: string,
  parse: (t: string) => unknown,
): Table {
  try {
    return parse(text) as Table
  } catch (err) {
    throw new ConfigError(source, [`not valid TOML: ${(err as Error).message}`])
  }
}

/**
 * Parses a config file and opens its main table (`[agent]` or `[server]`) beside `[plugins]`, the
 * shape agent and server configs share; unknown top-level tables and main keys are problems.
 */
export function openConfig(
  text: string,
  source: string,
  section: string,
  keys: readonly string[],
): { doc: Table; r: ConfigReader; main: Table | undefined } {
  const doc = parseTomlConfig(text, source, parseToml)
  const r = new ConfigReader(dirname(resolve(source)))
  r.known(doc, [section, 'plugins', 'health_checks', 'telemetry'], '')
  const main = r.table(doc, section, section, true)
  r.known(main, keys, section)
  return { doc, r, main }
}

/** Reads a config file, or one ConfigError naming it. */
export function readConfigFile(file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`])
  }
}

/**
 * `[plugins.KeyManager.<name>]`: exactly one, by name, with its settings kept raw; the key manager
 * catalog (src/keymanager/catalog.ts, listed per process in server/plugins.ts and
 * agent/plugins.ts) validates them and refuses names it does not have. Default: disk.
 */
export interface KeyManagerConfig {
  readonly name: string
  readonly data: Table
  /** Where a disk key directory defaults to (<data_dir>/keys). */
  readonly dataDir: string
  /** Relative paths in the settings resolve against the config file's folder. */
  readonly configDir: string
}

export function keyManagerConfig(
  r: ConfigReader,
  plugins: Table | undefined,
  dataDir: string,
  configDir: string,
): KeyManagerConfig {
  const km = r.table(plugins ?? {}, 'KeyManager', 'plugins.KeyManager') ?? { disk: {} }
  const names = Object.keys(km)
  if (names.length !== 1) r.problems.push('plugins.KeyManager: configure exactly one')
  const name = names[0] ?? 'disk'
  const data = r.table(km, name, `plugins.KeyManager.${name}`) ?? {}
  return { name, data, dataDir, configDir }
}

/** Records a problem unless `name` is a valid trust domain name. */
export function checkTrustDomain(r: ConfigReader, name: string, path: string): void {
  if (!/^[a-z0-9._-]{1,255}$/.test(name))
    r.problems.push(`${path}: '${name}' is not a valid trust domain name`)
}
