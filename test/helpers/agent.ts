import { join } from 'node:path'
import { AgentManager } from '../../src/agent/manager.js'
import { AgentStorage } from '../../src/agent/storage.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { silentLog } from '../../src/common/log.js'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'

export const testTrustDomain = TrustDomain.parse('example.org')

export interface TestAgent extends AsyncDisposable {
  readonly manager: AgentManager
}

/**
 * A real agent manager (join token, disk keys and SQLite state in `dir`) against a server at
 * `address`, started (attested or restored, first sync done).
 */
export async function startTestAgent(
  address: string,
  dir: string,
  token: string,
  opts: { syncIntervalMs?: number; cacheMaxSize?: number; jwtCacheMaxBytes?: number } = {},
): Promise<TestAgent> {
  const client = new GrpcNodeClient({ address, trustDomain: testTrustDomain, bundle: 'insecure' })
  const { storage } = AgentStorage.open(join(dir, 'agent.sqlite3'))
  const manager = new AgentManager({
    trustDomain: testTrustDomain,
    client,
    storage,
    keyManager: new DiskKeyManager(join(dir, 'keys')),
    attestor: joinTokenAgentAttestor(token),
    workloadKeyType: 'ec-p256',
    syncIntervalMs: opts.syncIntervalMs ?? 200,
    cacheMaxSize: opts.cacheMaxSize ?? 1000,
    ...(opts.jwtCacheMaxBytes === undefined ? {} : { jwtCacheMaxBytes: opts.jwtCacheMaxBytes }),
    log: silentLog,
  })
  try {
    await manager.start()
  } catch (err) {
    client.close()
    storage.close()
    throw err
  }
  return {
    manager,
    async [Symbol.asyncDispose]() {
      await manager.stop()
      client.close()
      storage.close()
    },
  }
}
