/**
 * The TPM attestor with the agent SVID key in a SoftHSM2 token (real swtpm, real SoftHSM2, real
 * server and agent processes): a server without allow_hsm_agent_key refuses it; with it, the agent
 * attests (selector tpm:agent_key:pkcs11), serves a workload, and after both restart finds the
 * same key in the token and the same identity; killed -9 with the server down it serves from the
 * token-sealed cache within 1 s; with the token cache key deleted the cache is refused and refetched.
 */
import assert from 'node:assert/strict'
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import pkcs11js from 'pkcs11js'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import { PKCS11_KEK_ID } from '../../src/keymanager/pkcs11-sealer.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { cacheWritten, createEntry, fetchServed, kill9, until } from '../helpers/offline.js'

test('TPM attestation with the agent key in a PKCS#11 token: opt-in, attests, serves, restart finds the key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-p11-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using sim = await startSwtpm()
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'tpmp11' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 })
  chmodSync(pinFile, 0o600)
  const serverConf = join(dir, 'server.conf')
  const writeServer = (allow: boolean) =>
    writeFileSync(
      serverConf,
      `[server]\ntrust_domain = "example.org"\ndata_dir = "./server"\nattest_rate_per_second = 1000\n` +
        `[plugins.KeyManager.disk]\n[plugins.NodeAttestor.tpm]\nek_ca_bundle = ${JSON.stringify(sim.ekCaBundle)}\n` +
        (allow ? 'allow_hsm_agent_key = true\n' : ''),
    )
  const agentConf = join(dir, 'agent.conf')
  const writeAgent = (address: string) =>
    writeFileSync(
      agentConf,
      `[agent]\ntrust_domain = "example.org"\nserver_address = "${address}"\ndata_dir = "./agent"\n` +
        `socket_path = "./agent/api.sock"\ninsecure_bootstrap = true\n` +
        `[plugins.NodeAttestor.tpm]\ntcti = "${sim.tcti}"\n` +
        `[plugins.KeyManager.pkcs11]\nmodule_path = "${token.modulePath}"\ntoken_label = "tpmp11"\npin_file = "${pinFile}"\nkey_label_prefix = "agent"\n` +
        `[plugins.WorkloadAttestor.unix]\n`,
    )

  // Without the opt-in the server refuses an agent key outside the TPM.
  writeServer(false)
  let server = await startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  writeAgent(String(server.first.listening))
  const refused = await cli(['agent', 'run', '--config', agentConf])
  assert.notEqual(refused.code, 0)
  assert.match(refused.stdout + refused.stderr, /hsm_key|allow_hsm_agent_key/)
  server.child.kill('SIGTERM')
  await server.exited

  writeServer(true)
  server = await startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  writeAgent(String(server.first.listening))
  let agent = await startCli(['agent', 'run', '--config', agentConf], t)
  const agentId = String(agent.first.agent_id)
  assert.match(agentId, /^spiffe:\/\/example\.org\/spire\/agent\/tpm\/[0-9a-f]{64}$/)
  const sock = String(server.first.admin_socket)
  const listed = JSON.parse(
    (await cli(['server', 'agent', 'list', '--admin-socket', sock, '--output', 'json'])).stdout,
  ) as {
    agents: {
      id: { trust_domain: string; path: string }
      selectors: { type: string; value: string }[]
    }[]
  }
  // SPIRE's agent.v1 shapes: the ID is {trust_domain, path}.
  const sels = listed.agents
    .find((a) => `spiffe://${a.id.trust_domain}${a.id.path}` === agentId)!
    .selectors.map((s) => `${s.type}:${s.value}`)
  assert.ok(sels.includes('tpm:agent_key:pkcs11'), sels.join(' '))

  // The agent key is a token object; the SVID is issued for it.
  const look = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'tpmp11' },
    pin: token.pin,
    keyLabelPrefix: 'agent',
  })
  const keys = await look.listKeys()
  look.close()
  assert.equal(keys.length, 1, keys.map((k) => k.id).join(', '))

  const APP = 'spiffe://example.org/tpm-p11/app'
  await createEntry(sock, agentId, APP)
  const apiSock = String(agent.first.socket_path)
  const served = await until('a workload SVID', 30_000, () => fetchServed(apiSock))
  assert.equal(served.spiffeId, APP)

  // Restart both: the agent finds its key in the token and attests again as the same agent.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0)
  server = await startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  writeAgent(String(server.first.listening))
  agent = await startCli(['agent', 'run', '--config', agentConf], t)
  assert.equal(agent.first.agent_id, agentId)
  const again = await until('a workload SVID after restart', 30_000, () => fetchServed(apiSock))
  assert.equal(again.spiffeId, APP)
  const look2 = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'tpmp11' },
    pin: token.pin,
    keyLabelPrefix: 'agent',
  })
  assert.deepEqual(
    (await look2.listKeys()).map((k) => k.id),
    keys.map((k) => k.id),
  )
  look2.close()

  // Offline: the server gone, the agent killed -9; restarted, it serves the same SVID at once from
  // the cache the token seals (no file-sealer warning).
  await cacheWritten(join(dir, 'agent'))
  const cached = await fetchServed(apiSock)
  await kill9(server)
  await kill9(agent)
  agent = await startCli(['agent', 'run', '--config', agentConf], t)
  const up = Date.now()
  const offline = await fetchServed(apiSock)
  assert.ok(Date.now() - up <= 1000, `served ${Date.now() - up} ms after the agent was up`)
  assert.equal(offline.leaf, cached.leaf)
  assert.match(agent.stderr(), /serving workload SVIDs from the sealed cache/)
  assert.doesNotMatch(agent.stderr(), /protected only by the key file/)
  assert.equal(existsSync(join(dir, 'agent', 'cache.key')), false, 'a software cache key was made')

  // The token's cache key deleted behind our back: the cache is refused and, with the server
  // back, the agent fetches its SVIDs again.
  await kill9(agent)
  const del = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'tpmp11' },
    pin: token.pin,
    keyLabelPrefix: 'agent',
  })
  await del.inSession('test', (p, s) => {
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: del.labelOf(PKCS11_KEK_ID) }])
    const hs = p.C_FindObjects(s, 4)
    p.C_FindObjectsFinal(s)
    assert.equal(hs.length, 1)
    for (const h of hs) p.C_DestroyObject(s, h)
  })
  del.close()
  server = await startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  writeAgent(String(server.first.listening))
  agent = await startCli(['agent', 'run', '--config', agentConf], t)
  const fresh = await until('a workload SVID after the key was deleted', 30_000, () =>
    fetchServed(apiSock),
  )
  assert.equal(fresh.spiffeId, APP)
  assert.notEqual(fresh.leaf, cached.leaf)
  assert.match(agent.stderr(), /discarded/)
  agent.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  assert.equal(await server.exited, 0)
})
