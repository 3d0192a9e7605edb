import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type TestContext, test } from 'node:test'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { AgentManager } from '../../src/agent/manager.js'
import { AgentStorage } from '../../src/agent/storage.js'
import { tpmAgentAttestor } from '../../src/attestors/tpm/agent.js'
import { silentLog } from '../../src/common/log.js'
import { type TpmKey, TpmKeyManager } from '../../src/keymanager/tpm.js'
import type { KeyManager } from '../../src/keymanager/types.js'
import { parseServerConfig } from '../../src/server/config.js'
import { startServer } from '../../src/server/server.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { TpmContext } from '../../src/tpm/context.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'

const td = TrustDomain.parse('example.org')

/** A real server; `tpm` false: join tokens only, so every TPM attestation is refused. */
async function server(t: TestContext, ekCaBundle?: string) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-'))
  const plugin = ekCaBundle
    ? `[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(ekCaBundle)}\n`
    : '[plugins.NodeAttestor.join_token]\n'
  const s = await startServer(
    parseServerConfig(
      `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nattest_rate_per_second = 1000\n${plugin}`,
      join(dir, 'server.conf'),
    ),
    { log: silentLog },
  )
  t.after(async () => {
    await s.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return `127.0.0.1:${s.port}`
}

/** A real agent manager with TPM attestation and TPM keys under dataDir (as src/agent/agent.ts). */
async function startTpmAgent(tpm: TpmContext, dataDir: string, address: string, state: string) {
  const keys = new TpmKeyManager(tpm, join(dataDir, 'tpm-keys'))
  let current: TpmKey | undefined
  const keyManager: KeyManager = {
    generateKey: async (id, type) => {
      current = await keys.generateKey(id, type)
      return current
    },
    getKey: (id) => keys.getKey(id),
    listKeys: () => keys.listKeys(),
    deleteKey: (id) => keys.deleteKey(id),
  }
  const client = new GrpcNodeClient({ address, trustDomain: td, bundle: 'insecure' })
  const { storage } = AgentStorage.open(join(dataDir, state))
  const manager = new AgentManager({
    trustDomain: td,
    client,
    storage,
    keyManager,
    attestor: tpmAgentAttestor({
      tpm,
      dataDir: join(dataDir, 'tpm'),
      agentKey: () => current!,
    }),
    workloadKeyType: 'ec-p256',
    syncIntervalMs: 60_000,
    cacheMaxSize: 100,
    log: silentLog,
  })
  const close = async () => {
    await manager.stop()
    client.close()
    storage.close()
  }
  try {
    await manager.start()
  } catch (err) {
    await close()
    throw err
  }
  return { manager, close }
}

const blobs = (dataDir: string) =>
  existsSync(join(dataDir, 'tpm-keys')) ? readdirSync(join(dataDir, 'tpm-keys')).sort() : []

test('failed TPM attestations leave no key or AK blobs; the working identity keeps its own', async (t) => {
  const sim = await startSwtpm()
  t.after(() => sim.stop())
  const tpm = await TpmContext.open(sim.tcti)
  t.after(() => tpm.close())
  const dataDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-agent-'))
  t.after(() => rmSync(dataDir, { recursive: true, force: true }))
  const refusing = await server(t)
  const trusting = await server(t, sim.ekCaBundle)

  // A first attempt that fails: no agent key blob, no AK files, no temp files.
  await assert.rejects(startTpmAgent(tpm, dataDir, refusing, 'a.sqlite3'))
  await assert.rejects(startTpmAgent(tpm, dataDir, refusing, 'a.sqlite3'))
  assert.deepEqual(blobs(dataDir), [])
  assert.deepEqual(existsSync(join(dataDir, 'tpm')) ? readdirSync(join(dataDir, 'tpm')) : [], [])

  // A working identity: one key blob and the AK it was attested with.
  const ok = await startTpmAgent(tpm, dataDir, trusting, 'a.sqlite3')
  const working = blobs(dataDir)
  assert.equal(working.length, 1)
  assert.deepEqual(readdirSync(join(dataDir, 'tpm')).sort(), ['ak.priv', 'ak.pub'])
  const akPriv = readFileSync(join(dataDir, 'tpm', 'ak.priv'))
  const akPub = readFileSync(join(dataDir, 'tpm', 'ak.pub'))
  await ok.close()

  // Another attempt (fresh state, same key and AK dirs) fails: only its own key is removed.
  await assert.rejects(startTpmAgent(tpm, dataDir, refusing, 'b.sqlite3'))
  assert.deepEqual(blobs(dataDir), working)
  assert.deepEqual(readFileSync(join(dataDir, 'tpm', 'ak.priv')), akPriv)
  assert.deepEqual(readFileSync(join(dataDir, 'tpm', 'ak.pub')), akPub)
  assert.deepEqual(readdirSync(join(dataDir, 'tpm')).sort(), ['ak.priv', 'ak.pub'])

  // The working identity still restores and runs.
  const again = await startTpmAgent(tpm, dataDir, trusting, 'a.sqlite3')
  assert.equal(again.manager.health().ready, true)
  await again.close()
})
