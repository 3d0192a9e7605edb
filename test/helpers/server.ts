import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLog } from '../../src/common/log.js'
import { adminCall } from '../../src/server/admin-client.js'
import type { Clock } from '../../src/server/ca.js'
import { parseServerConfig } from '../../src/server/config.js'
import { type RunningServer, startServer } from '../../src/server/server.js'
import type { BrokerAccess } from '../../src/transport/mqtt/broker-access.js'

export interface TestServer extends AsyncDisposable {
  readonly server: RunningServer
  readonly dir: string
  readonly address: string
  admin(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    body?: unknown,
  ): Promise<Record<string, unknown>>
  token(spiffeId?: string): Promise<string>
}

/** A real server on loopback in its own temp dir (on-disk SQLite, disk keys), port chosen by the OS. */
export async function startTestServer(
  opts: {
    extraToml?: string
    clock?: Clock
    tickMs?: number
    /** Reuse a data dir (a restart); the caller then owns and removes it. */
    dir?: string
    port?: number
    /** Broker authorization for the MQTT listener (server option brokerAccess). */
    brokerAccess?: BrokerAccess
  } = {},
): Promise<TestServer> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'spiffe-edge-server-'))
  const config = parseServerConfig(
    // Tests attest many agents from one address: lift the per-source limit unless a test sets it.
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nca_ttl = "24h"\n${/^admin_socket\s*=/m.test(opts.extraToml ?? '') ? '' : 'admin_socket = "./data/admin.sock"\n'}${opts.extraToml ?? 'attest_rate_per_second = 1000'}\n[plugins.NodeAttestor.join_token]\n`,
    join(dir, 'server.conf'),
    opts.port === undefined ? {} : { bindPort: opts.port },
  )
  const server = await startServer(config, {
    log: silentLog,
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.tickMs ? { tickMs: opts.tickMs } : {}),
    ...(opts.brokerAccess ? { brokerAccess: opts.brokerAccess } : {}),
  })
  const admin = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown) =>
    adminCall(server.adminSocket, method, path, body)
  return {
    server,
    dir,
    address: `127.0.0.1:${server.port}`,
    admin,
    async token(spiffeId?: string) {
      const r = await admin('POST', '/v1/tokens', spiffeId ? { spiffe_id: spiffeId } : {})
      return String(r.token)
    },
    async [Symbol.asyncDispose]() {
      await server.close()
      if (!opts.dir) rmSync(dir, { recursive: true, force: true })
    },
  }
}
