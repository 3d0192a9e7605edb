import { execFile } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The checkout root (tests run from dist/test/...). */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const cliPath = join(repoRoot, 'bin', 'spiffe-edge')

export interface ExecResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Runs a program to completion and collects its output; never rejects on a non-zero exit. */
export function run(
  command: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      { env: opts.env ?? process.env, encoding: 'buffer', maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
        if (err && typeof err.code === 'string') return reject(err)
        resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() })
      },
    )
    if (opts.input !== undefined) child.stdin?.end(opts.input)
  })
}

/** Runs the spiffe-edge CLI as a user would, through bin/spiffe-edge. */
export function cli(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<ExecResult> {
  return run(process.execPath, [cliPath, ...args], env ? { env } : {})
}
