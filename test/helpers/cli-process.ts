import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { cliPath } from './exec.js'

export interface CliProcess {
  readonly child: ChildProcess
  /** The JSON line a long-running command prints when it is ready. */
  readonly first: Record<string, unknown>
  readonly exited: Promise<number | null>
  stderr(): string
}

/**
 * Starts a long-running CLI command (server run, agent run) as an operator would, waits for its
 * ready line, and kills it after the test even when the test fails.
 */
export async function startCli(
  args: string[],
  t: { after: (fn: () => Promise<void>) => void },
  opts: { env?: NodeJS.ProcessEnv } = {},
): Promise<CliProcess> {
  const child = spawn(process.execPath, [cliPath, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.env ? { env: opts.env } : {}),
  })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)))
  t.after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL')
    await exited
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    void exited.then((c) =>
      reject(new Error(`${args.slice(0, 2).join(' ')} exited ${c}: ${stderr}`)),
    )
  })
  return { child, first: JSON.parse(line) as Record<string, unknown>, exited, stderr: () => stderr }
}
