/**
 * `server validate` / `agent validate` (SPIRE's verbs) and `config convert` (SPIRE's HCL to our
 * TOML, listing what does not map). A converted file is never written over an existing one.
 */
import { closeSync, constants, openSync, writeSync } from 'node:fs'
import { parseAgentConfig } from '../agent/config.js'
import { readConfigFile } from '../common/config.js'
import { UsageError } from '../errors.js'
import { parseServerConfig } from '../server/config.js'
import { type Group, type Leaf, requireString } from './command.js'
import { EXPAND_ENV, readConfigText } from './config-source.js'
import { type ConfigKind, convertSpireConfig, expandEnv } from './spire-config.js'

const CONFIG = {
  type: 'string',
  description: "config file (TOML, or SPIRE's HCL)",
  valueName: 'FILE',
} as const

export function validateCommand(kind: ConfigKind): Leaf {
  return {
    kind: 'command',
    name: 'validate',
    summary: `check a ${kind} config and say what is wrong, without starting anything`,
    options: { config: CONFIG, expandEnv: EXPAND_ENV },
    async run(values, io) {
      const file = requireString(values, 'config')
      const src = await readConfigText(file, kind, {
        expandEnv: values.expandEnv === true,
        env: io.env,
      })
      if (kind === 'server') parseServerConfig(src.text, file)
      else parseAgentConfig(src.text, file)
      for (const n of src.notes) io.out(`note: ${n}\n`)
      io.out(
        values.json
          ? `${JSON.stringify({ valid: true, notes: src.notes })}\n`
          : 'Configuration is valid.\n',
      )
      return 0
    },
  }
}

function writeNew(path: string, text: string): void {
  let fd: number
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o640)
  } catch (err) {
    throw new UsageError(
      `cannot create ${path}: ${(err as Error).message}`,
      (err as NodeJS.ErrnoException).code === 'EEXIST'
        ? 'it exists and is never overwritten: pick another -out, or move it away first'
        : 'check the directory',
    )
  }
  try {
    writeSync(fd, text)
  } finally {
    closeSync(fd)
  }
}

const convert: Leaf = {
  kind: 'command',
  name: 'convert',
  summary: "convert SPIRE's server.conf or agent.conf (HCL) to a spiffe-edge TOML config",
  details:
    'What has no equivalent here is listed on stderr and as comments at the top of the output;\n' +
    'the exit code is 1 when anything was left out, so a script notices.',
  options: {
    config: { ...CONFIG, description: "SPIRE's config file (HCL)" },
    out: {
      type: 'string',
      description: 'write here (a new file) instead of stdout',
      valueName: 'FILE',
    },
    expandEnv: EXPAND_ENV,
  },
  async run(values, io) {
    const file = requireString(values, 'config')
    let text = readConfigFile(file)
    if (values.expandEnv === true) text = expandEnv(text, io.env, file)
    const c = await convertSpireConfig(text, file)
    const header = [
      `# spiffe-edge ${c.kind} config converted from SPIRE's ${file}`,
      ...c.notes.map((n) => `# note: ${n}`),
      ...c.unmapped.map((u) => `# NOT MAPPED: ${u}`),
    ].join('\n')
    const out = `${header}\n${c.toml}`
    if (typeof values.out === 'string') writeNew(values.out, out)
    else io.out(out)
    for (const u of c.unmapped) io.err(`not mapped: ${u}\n`)
    return c.unmapped.length === 0 ? 0 : 1
  },
}

export const configGroup: Group = {
  kind: 'group',
  name: 'config',
  summary: "configs: convert SPIRE's HCL files",
  children: [convert],
}
