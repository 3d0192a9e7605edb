/**
 * A bench helper process (bench/server-proc.ts, bench/pkcs11-raw-proc.ts) forked with an IPC
 * channel: one question at a time, answers in order. BENCH_CPU_PROF=<dir> profiles the child
 * (node --cpu-prof) when `profile` is set.
 */
import { fork } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface Proc {
  ask: (m: Record<string, unknown>) => Promise<Record<string, unknown>>
  ready: Promise<Record<string, unknown>>
  quit: () => void
}

export function forkProc(
  script: string,
  opts: { env?: NodeJS.ProcessEnv; profile?: boolean } = {},
): Proc {
  const here = dirname(fileURLToPath(import.meta.url))
  const prof = opts.profile ? process.env.BENCH_CPU_PROF : undefined
  const child = fork(join(here, script), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [],
    env: { ...process.env, ...opts.env },
  })
  const queue: ((m: Record<string, unknown>) => void)[] = []
  child.on('message', (m: Record<string, unknown>) => queue.shift()?.(m))
  // A child that dies must not leave the bench waiting forever.
  child.on('exit', (code) => {
    for (const r of queue.splice(0)) r({ error: `${script} exited (${code})` })
  })
  const next = () => new Promise<Record<string, unknown>>((r) => queue.push(r))
  const ready = next()
  return {
    ready: ready.then((a) => {
      if (a.error) throw new Error(String(a.error))
      return a
    }),
    ask: async (m) => {
      const p = next()
      child.send(m)
      const a = await p
      if (a.error) throw new Error(String(a.error))
      return a
    },
    quit: () => {
      if (child.connected) child.send({ op: 'quit' })
    },
  }
}
