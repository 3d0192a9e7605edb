/**
 * The TPM attestor with the agent SVID key in a SoftHSM2 token (real swtpm, real SoftHSM2, real
 * server and agent processes): a server without allow_hsm_agent_key refuses it; with it, the agent
 * attests (selector tpm:agent_key:pkcs11), serves a workload, and after both restart finds the
 * same key in the token and the same identity.
 */
import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { createEntry, fetchServed, until } from '../helpers/offline.js'

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
  ) as { agents: { spiffeId: string; selectors: { type: string; value: string }[] }[] }
  const sels = listed.agents
    .find((a) => a.spiffeId === agentId)!
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
  agent.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  assert.equal(await server.exited, 0)
})
