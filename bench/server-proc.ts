/**
 * A real test server (bench helper) in its own process, so a bench can measure the server's CPU
 * time apart from its clients'. Forked with an IPC channel; messages:
 *   {op:'token'} → {token}; {op:'admin', method, path, body} → {result};
 *   {op:'cpu'} → {us}: this process's user + system CPU time so far, µs;
 *   {op:'mainCpu'} → {us}: the main (event-loop) thread's alone, from /proc (Linux, 10 ms
 *     ticks; -1 elsewhere): the rest is libuv workers (PKCS#11 C_SignAsync) and V8's threads;
 *   {op:'loop'} → {maxMs, p99Ms}: this process's event-loop delay since the last 'loop' (then reset);
 *   {op:'quit'}.
 * On start it sends {address, dir}. BENCH_SERVER_TOML, when set, is the server's extra config
 * (a [plugins.KeyManager.pkcs11] block, a [server.mqtt] table) in place of the test server's
 * default rate-limit line; otherwise the test server's default (disk keys).
 */
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { startTestServer } from '../test/helpers/server.js'

const toml = process.env.BENCH_SERVER_TOML
const s = await startTestServer(toml ? { extraToml: toml } : {})
// How long a batch holds the event loop (CSR checks run in chunks; token signing on a thread).
const loop = monitorEventLoopDelay({ resolution: 1 })
loop.enable()
/** The main thread's user + system CPU time, µs (fields 14-15 of /proc/self/task/<pid>/stat). */
function mainThreadCpuUs(): number {
  try {
    const st = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) * 10_000 // USER_HZ is 100 on Linux
  } catch {
    return -1
  }
}

const send = (m: unknown) => process.send!(m)
process.on(
  'message',
  async (m: {
    op: string
    method?: 'GET' | 'POST' | 'PUT' | 'DELETE'
    path?: string
    body?: unknown
  }) => {
    try {
      if (m.op === 'token') send({ token: await s.token() })
      else if (m.op === 'admin') send({ result: await s.admin(m.method!, m.path!, m.body) })
      else if (m.op === 'cpu') {
        const u = process.cpuUsage()
        send({ us: u.user + u.system })
      } else if (m.op === 'mainCpu') send({ us: mainThreadCpuUs() })
      else if (m.op === 'loop') {
        send({ maxMs: loop.max / 1e6, p99Ms: loop.percentile(99) / 1e6 })
        loop.reset()
      } else if (m.op === 'quit') {
        await s[Symbol.asyncDispose]()
        process.exit(0)
      }
    } catch (err) {
      send({ error: (err as Error).message })
    }
  },
)
send({ address: s.address, dir: s.dir })
