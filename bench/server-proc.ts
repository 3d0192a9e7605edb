/**
 * A real test server (bench helper) in its own process, so a bench can measure the server's CPU
 * time apart from its clients'. Forked with an IPC channel; messages:
 *   {op:'token'} → {token}; {op:'admin', method, path, body} → {result};
 *   {op:'cpu'} → {us}: this process's user + system CPU time so far, µs; {op:'quit'}.
 * On start it sends {address, dir}. BENCH_SERVER_TOML, when set, is the server's extra config
 * (e.g. a [plugins.KeyManager.pkcs11] block); otherwise the test server's default (disk keys).
 */
import { startTestServer } from '../test/helpers/server.js'

const toml = process.env.BENCH_SERVER_TOML
const s = await startTestServer(toml ? { extraToml: toml } : {})
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
