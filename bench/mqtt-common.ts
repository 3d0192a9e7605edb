/** What the MQTT benches (mqtt.ts, mqtt-tpm.ts, mqtt-trace.ts) share. */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { adminCall } from '../src/server/admin-client.js'
import { parseServerConfig } from '../src/server/config.js'

/** CPU ns of every thread of `pid` so far (threads that ended meanwhile are lost: none here). */
export function cpuNs(pid: number | 'self'): number {
  let sum = 0
  const dir = `/proc/${pid}/task`
  for (const tid of readdirSync(dir)) {
    try {
      sum += Number(readFileSync(`${dir}/${tid}/schedstat`, 'utf8').split(' ')[0])
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return sum
}

/** A server config with gRPC and `[server.mqtt]` on `broker`, and the node attestor TOML given. */
export function mqttServerConfig(
  broker: { url: string; caFile?: string },
  dir: string,
  attestorToml: string,
) {
  return parseServerConfig(
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nattest_rate_per_second = 10000\n` +
      `[server.mqtt]\nurl = "${broker.url}"\nca_file = "${broker.caFile}"\n${attestorToml}`,
    join(dir, 'server.conf'),
  )
}

/** Makes a join token for spiffe://example.org/bench through the admin socket. */
export async function benchToken(adminSocket: string): Promise<string> {
  return String(
    (
      await adminCall(adminSocket, 'POST', '/v1/tokens', {
        spiffe_id: 'spiffe://example.org/bench',
      })
    ).token,
  )
}
