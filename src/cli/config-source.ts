/**
 * Where `run` and `validate` get their config text: our TOML as is, or SPIRE's HCL converted
 * (refused when something in it has no equivalent), after SPIRE's -expandEnv where asked.
 */
import { ConfigError, readConfigFile } from '../common/config.js'
import type { OptionSpec } from './command.js'
import { type ConfigKind, convertSpireConfig, expandEnv, looksLikeHcl } from './spire-config.js'

export const EXPAND_ENV: OptionSpec = {
  type: 'boolean',
  description:
    'expand environment variables ($VAR, or VAR in $ and braces) in the config (SPIRE: -expandEnv)',
}

export interface ConfigText {
  /** TOML text to parse with the file's own path as source. */
  readonly text: string
  /** SPIRE settings mapped with a difference (from an HCL file). */
  readonly notes: readonly string[]
  readonly spire: boolean
}

export async function readConfigText(
  file: string,
  kind: ConfigKind,
  opts: { expandEnv?: boolean; env?: NodeJS.ProcessEnv } = {},
): Promise<ConfigText> {
  let text = readConfigFile(file)
  if (opts.expandEnv) text = expandEnv(text, opts.env ?? process.env, file)
  if (!looksLikeHcl(text)) return { text, notes: [], spire: false }
  const c = await convertSpireConfig(text, file)
  if (c.kind !== kind)
    throw new ConfigError(file, [`this is SPIRE's ${c.kind} config, not the ${kind}'s`])
  if (c.unmapped.length > 0) {
    throw new ConfigError(file, [
      ...c.unmapped,
      `(SPIRE config: 'spiffe-edge config convert ${file}' writes what maps; remove or replace the rest)`,
    ])
  }
  return { text: c.toml, notes: c.notes, spire: true }
}
