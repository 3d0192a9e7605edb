/**
 * Keys in an HSM end to end, as an operator runs it: a SoftHSM2 token (`sim hsm init`), a server
 * process whose CA and JWT keys live in the token, an agent process (join token) whose SVID key
 * lives there too, a workload fetching SVIDs that OpenSSL verifies, then both restarted: the keys
 * are found again in the token, the CA and the agent identity are the same.
 */
import assert from 'node:assert/strict'
import { createPublicKey, X509Certificate } from 'node:crypto'
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import { processDir } from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, run } from '../helpers/exec.js'

test('server CA + JWT keys and the agent SVID key in SoftHSM2: SVIDs verify with OpenSSL, restart finds the keys', async (t) => {
  const dir = processDir('spiffe-edge-e2e-p11-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'e2e' })
  // SoftHSM2 finds its token store through SOFTHSM2_CONF; the processes inherit it.
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 })
  chmodSync(pinFile, 0o600)
  const p11 = (prefix: string) =>
    `[plugins.KeyManager.pkcs11]\nmodule_path = "${token.modulePath}"\ntoken_label = "e2e"\npin_file = "${pinFile}"\nkey_label_prefix = "${prefix}"\n`
  const serverConf = join(dir, 'server.conf')
  writeFileSync(
    serverConf,
    `[server]\ntrust_domain = "example.org"\ndata_dir = "./server"\nadmin_socket = "./server/admin.sock"\n${p11('server')}[plugins.NodeAttestor.join_token]\n`,
  )
  const agentConf = join(dir, 'agent.conf')
  const startServer = () => startCli(['server', 'run', '--config', serverConf, '--port', '0'], t)
  let server = await startServer()
  const sock = String(server.first.admin_socket)
  const address = String(server.first.listening)
  writeFileSync(
    agentConf,
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${address}"\ndata_dir = "./agent"\n` +
      `socket_path = "./agent/public/api.sock"\ninsecure_bootstrap = true\n` +
      `[plugins.NodeAttestor.join_token]\n${p11('agent')}[plugins.WorkloadAttestor.unix]\n`,
  )
  const admin = async (...args: string[]) => {
    const r = await cli(['server', ...args, '--admin-socket', sock])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  }
  const joinToken = JSON.parse(
    await admin('token', 'generate', '--spiffeID', 'spiffe://example.org/host', '--json'),
  ).value as string
  await admin(
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    'spiffe://example.org/me',
    '--selector',
    `unix:uid:${process.getuid!()}`,
  )
  let agent = await startCli(['agent', 'run', '--config', agentConf, '--join-token', joinToken], t)
  const apiSock = String(agent.first.socket_path)
  const agentId = String(agent.first.agent_id)

  // No key files anywhere: the keys are token objects.
  assert.equal(existsSync(join(dir, 'server', 'keys')), false)
  assert.equal(existsSync(join(dir, 'agent', 'keys')), false)
  const look = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'e2e' },
    pin: token.pin,
    keyLabelPrefix: 'server',
  })
  const serverKeys = await look.listKeys()
  look.close()
  const caKey = serverKeys.find((k) => k.id.startsWith('x509-ca-'))
  assert.ok(caKey, `CA key in the token: ${serverKeys.map((k) => k.id).join(', ')}`)
  assert.ok(
    serverKeys.some((k) => k.id.startsWith('jwt-')),
    'JWT key in the token',
  )
  const agentLook = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'e2e' },
    pin: token.pin,
    keyLabelPrefix: 'agent',
  })
  const agentKeys = (await agentLook.listKeys()).map((k) => k.id)
  agentLook.close()
  assert.equal(agentKeys.length, 1, agentKeys.join(', '))
  assert.match(agentKeys[0]!, /^agent-svid-/)

  const fetchAndVerify = async (out: string): Promise<X509Certificate> => {
    const fetched = await cli(['api', 'fetch', 'x509', '--socket-path', apiSock, '--write', out])
    assert.equal(fetched.code, 0, fetched.stderr)
    assert.match(fetched.stdout, /spiffe:\/\/example\.org\/me/)
    const v = await run('openssl', [
      'verify',
      '-CAfile',
      join(out, 'bundle.0.pem'),
      join(out, 'svid.0.pem'),
    ])
    assert.equal(v.code, 0, v.stdout + v.stderr)
    // The CA that signed the SVID is the key in the token.
    const ca = new X509Certificate(readFileSync(join(out, 'bundle.0.pem')))
    assert.ok(
      createPublicKey(ca.publicKey.export({ type: 'spki', format: 'pem' })).equals(caKey.publicKey),
    )
    return ca
  }
  const ca1 = await fetchAndVerify(join(dir, 'out1'))

  const jwt = await cli(['api', 'fetch', 'jwt', '--socket-path', apiSock, '--audience', 'db'])
  assert.equal(jwt.code, 0, jwt.stderr)
  const jwtText = jwt.stdout.match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/)?.[0]
  assert.ok(jwtText, jwt.stdout)
  const valid = await cli([
    'api',
    'validate',
    'jwt',
    '--socket-path',
    apiSock,
    '--audience',
    'db',
    '--svid',
    jwtText,
  ])
  assert.equal(valid.code, 0, valid.stderr)

  // Restart both: the server finds its CA in the token, the agent its SVID key.
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0)
  server = await startServer()
  writeFileSync(
    agentConf,
    readFileSync(agentConf, 'utf8').replace(address, String(server.first.listening)),
  )
  agent = await startCli(['agent', 'run', '--config', agentConf], t)
  assert.equal(agent.first.agent_id, agentId, 'same agent identity after restart')
  const ca2 = await fetchAndVerify(join(dir, 'out2'))
  assert.equal(ca2.fingerprint256, ca1.fingerprint256, 'same CA after restart')
  agent.child.kill('SIGTERM')
  server.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  assert.equal(await server.exited, 0)
})
