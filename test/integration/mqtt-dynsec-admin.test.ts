/**
 * The dynsec admin client against real Mosquitto brokers: a broker restart (state persists, the
 * client reconnects by itself), wrong credentials, a broker without the plugin (timeout), the
 * response size bound, forged replies on the shared response topic, and `sim mqtt start --dynsec`.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt from 'mqtt'
import { startMosquitto, stopMosquittoDaemon } from '../../hardware-sim/mosquitto.js'
import { pidAlive } from '../../hardware-sim/process.js'
import { agentTopicKey, mqttTopics } from '../../src/transport/mqtt/broker-access.js'
import { MosquittoDynSec } from '../../src/transport/mqtt/dynsec.js'
import { DynSecClient, readPasswordFile } from '../../src/transport/mqtt/dynsec-client.js'
import { cli } from '../helpers/exec.js'
import {
  caOf,
  connectAs,
  connectReason,
  GRANTED_QOS1,
  NOT_AUTHORIZED,
  subReason,
} from '../helpers/mqtt-probe.js'

const AGENT = 'spiffe://example.org/spire/agent/tpm/restart'
const t = mqttTopics('spiffe-edge')

test('the admin client survives a broker restart; the state file keeps every client', async () => {
  await using broker = await startMosquitto({ tls: true, dynsec: true })
  const d = broker.dynsec!
  const dynsec = await MosquittoDynSec.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    ca: caOf(broker),
    reconnectPeriodMs: 100,
    timeoutMs: 15_000,
  })
  try {
    const before = await dynsec.grantAgent(AGENT)
    const oldPid = broker.pid
    await broker.restart()
    assert.notEqual(broker.pid, oldPid)
    // The next command waits for the reconnect instead of failing at once.
    const info = await dynsec.admin.getClient(before.username)
    assert.equal(info?.username, before.username)
    const k = agentTopicKey(AGENT)
    const agent = await connectAs(broker, before, `agent-${k}`)
    assert.equal(await subReason(agent, t.agentRes(k)), GRANTED_QOS1)
    assert.equal(await subReason(agent, t.agentRes('+')), NOT_AUTHORIZED)
    await agent.endAsync()
    // Granting after the restart works, and the bootstrap client made at first start still does.
    const rotated = await dynsec.grantAgent(AGENT)
    assert.equal(await connectReason(broker, rotated, `agent-${k}`), 0)
    assert.equal(await connectReason(broker, d.bootstrap, 'bs-0123456789abcdef0123456789abcdef'), 0)
    // The state file holds password hashes: owner only.
    assert.equal(statSync(d.stateFile).mode & 0o077, 0)
  } finally {
    await dynsec.close()
  }
})

test('a command while the broker is down fails with ERR_BROKER_ADMIN_UNREACHABLE, then works again', async () => {
  await using broker = await startMosquitto({ dynsec: true })
  const d = broker.dynsec!
  const admin = await DynSecClient.connect({
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
    reconnectPeriodMs: 100,
    timeoutMs: 1500,
  })
  try {
    await broker.stop()
    for (let i = 0; i < 100 && admin.connected; i++) await sleep(20)
    await assert.rejects(admin.listClients(), { code: 'ERR_BROKER_ADMIN_UNREACHABLE' })
    await broker.restart()
    let listed: { totalCount: number } | undefined
    for (let i = 0; i < 10 && listed === undefined; i++) {
      listed = await admin.listClients().catch(() => undefined)
    }
    assert.ok(listed !== undefined && listed.totalCount >= 3, 'admin, bootstrap, server')
  } finally {
    await admin.close()
  }
})

test('wrong admin credentials, a missing broker and a broker without the plugin are named', async () => {
  await using broker = await startMosquitto({ dynsec: true })
  const d = broker.dynsec!
  await assert.rejects(
    DynSecClient.connect({ url: broker.url, username: d.adminUsername, password: 'wrong' }),
    { code: 'ERR_BROKER_ADMIN_AUTH' },
  )
  // The server's own client may not read the admin replies: refused at connect, not hung.
  await assert.rejects(
    DynSecClient.connect({
      url: broker.url,
      username: d.server.username,
      password: d.server.password,
    }),
    { code: 'ERR_BROKER_ADMIN_AUTH' },
  )
  const port = broker.port
  await broker.stop()
  await assert.rejects(
    DynSecClient.connect({
      url: `mqtt://127.0.0.1:${port}`,
      username: 'x',
      password: 'y',
      connectTimeoutMs: 2000,
    }),
    { code: 'ERR_BROKER_ADMIN_UNREACHABLE' },
  )
  // A plain broker accepts the request but nothing answers it: a bounded wait, then an error.
  await using plain = await startMosquitto()
  const c = await DynSecClient.connect({
    url: plain.url,
    username: 'x',
    password: 'y',
    timeoutMs: 800,
  })
  try {
    const started = Date.now()
    await assert.rejects(c.getClient('nobody'), { code: 'ERR_BROKER_ADMIN_UNREACHABLE' })
    assert.ok(Date.now() - started < 10_000)
  } finally {
    await c.close()
  }
})

test('an admin whose password was changed under it reports ERR_BROKER_ADMIN_AUTH, not a hang', async () => {
  await using broker = await startMosquitto({ dynsec: true })
  const d = broker.dynsec!
  const opts = {
    url: broker.url,
    username: d.adminUsername,
    password: readPasswordFile(d.adminPasswordFile),
  }
  const first = await DynSecClient.connect({ ...opts, reconnectPeriodMs: 100, timeoutMs: 2000 })
  // A second admin user (the 'admin' role dynsec init made) re-keys the first one.
  await first.createClient({ username: 'ops', password: 'ops-pw', roles: [{ rolename: 'admin' }] })
  const ops = await DynSecClient.connect({ ...opts, username: 'ops', password: 'ops-pw' })
  try {
    await ops.setClientPassword(d.adminUsername, 'rotated-elsewhere')
    for (let i = 0; i < 100 && first.connected; i++) await sleep(20)
    await assert.rejects(first.listClients(), { code: 'ERR_BROKER_ADMIN_AUTH' })
  } finally {
    await first.close()
    await ops.close()
  }
})

test('responses are bounded, refused commands carry the broker error, forged replies are ignored', async () => {
  await using broker = await startMosquitto({ dynsec: true })
  const d = broker.dynsec!
  const password = readPasswordFile(d.adminPasswordFile)
  const opts = { url: broker.url, username: d.adminUsername, password }
  const small = await DynSecClient.connect({ ...opts, maxResponseBytes: 64, timeoutMs: 1500 })
  const admin = await DynSecClient.connect({ ...opts, timeoutMs: 5000 })
  // A second admin connection that forges answers on the shared response topic.
  const forger = await mqtt.connectAsync(broker.url, {
    protocolVersion: 5,
    username: d.adminUsername,
    password,
    reconnectPeriod: 0,
  })
  try {
    // listRoles with ACLs is far above 64 bytes: the broker may not send it, and we time out.
    await assert.rejects(small.run([{ command: 'listRoles', verbose: true }]), {
      code: 'ERR_BROKER_ADMIN_UNREACHABLE',
    })
    await assert.rejects(admin.createRole('spiffe-edge-bootstrap'), (err: unknown) => {
      const e = err as { code?: string; brokerError?: string; remedy?: string }
      assert.equal(e.code, 'ERR_BROKER_ADMIN')
      assert.match(e.brokerError ?? '', /already exists/i)
      assert.ok(e.remedy)
      return true
    })
    // Garbage and replies to someone else's batch on the shared response topic, delivered
    // before the real reply: ignored, and the real reply is still matched.
    for (const junk of [
      'not json',
      '{"responses":"x"}',
      JSON.stringify({
        responses: [
          {
            command: 'getClient',
            correlationData: 'ffffffffffffffffffffffff.0',
            data: { client: { username: 'forged', roles: [], groups: [] } },
          },
        ],
      }),
    ]) {
      await forger.publishAsync('$CONTROL/dynamic-security/v1/response', junk, { qos: 1 })
    }
    const info = await admin.getClient('spiffe-edge-bootstrap')
    assert.equal(info?.username, 'spiffe-edge-bootstrap')
    // Two admin connections see each other's replies; each still gets its own answers.
    const names = ['spiffe-edge-admin', 'spiffe-edge-bootstrap', 'spiffe-edge-server', 'nobody']
    const other = await DynSecClient.connect({ ...opts, timeoutMs: 5000 })
    try {
      const both = await Promise.all(
        [admin, other, admin, other].flatMap((c) =>
          names.map((n) => c.getClient(n).then((i) => i?.username ?? 'nobody')),
        ),
      )
      assert.deepEqual(both, [...names, ...names, ...names, ...names])
    } finally {
      await other.close()
    }
  } finally {
    await forger.endAsync()
    await small.close()
    await admin.close()
  }
})

test('cli: sim mqtt start --dynsec prints the admin, bootstrap and server clients; anonymous is refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-dynsec-cli-'))
  let pid: number | undefined
  try {
    const r = await cli(['sim', 'mqtt', 'start', '--state', dir, '--tls', '--dynsec'])
    assert.equal(r.code, 0, r.stderr)
    const out = JSON.parse(r.stdout) as Record<string, string | number>
    pid = out.pid as number
    assert.equal(out.admin_username, 'spiffe-edge-admin')
    assert.equal(out.admin_password_file, join(dir, 'dynsec-admin.password'))
    assert.equal(out.bootstrap_username, 'spiffe-edge-bootstrap')
    assert.equal(out.server_username, 'spiffe-edge-server')
    assert.equal(out.dynsec_state, join(dir, 'dynsec.json'))
    for (const f of ['admin_password_file', 'bootstrap_password_file', 'server_password_file']) {
      assert.equal(statSync(String(out[f])).mode & 0o077, 0, `${f} is owner-only`)
    }
    assert.ok(!r.stdout.includes(readPasswordFile(String(out.admin_password_file))))
    const ca = caOf({ caFile: String(out.ca) } as never)
    await assert.rejects(
      mqtt.connectAsync(String(out.url), { protocolVersion: 5, ca: [ca], reconnectPeriod: 0 }),
      (err: unknown) => Number((err as { code?: unknown }).code) === NOT_AUTHORIZED,
    )
    const admin = await MosquittoDynSec.connect({
      url: String(out.url),
      username: String(out.admin_username),
      password: readPasswordFile(String(out.admin_password_file)),
      ca,
    })
    try {
      const boot = await admin.admin.getClient(String(out.bootstrap_username))
      assert.deepEqual(
        boot?.roles.map((x) => x.rolename),
        ['spiffe-edge-bootstrap'],
      )
    } finally {
      await admin.close()
    }
    const stop = await cli(['sim', 'mqtt', 'stop', '--state', dir])
    assert.equal(stop.code, 0, stop.stderr)
    await assert.rejects(stopMosquittoDaemon(dir), { code: 'ERR_SIM_NOT_RUNNING' })
    // A second start on the same state keeps the clients and their passwords (agents keep working).
    const again = await cli(['sim', 'mqtt', 'start', '--state', dir, '--dynsec'])
    assert.equal(again.code, 0, again.stderr)
    const out2 = JSON.parse(again.stdout) as Record<string, string | number>
    pid = out2.pid as number
    assert.equal(out2.bootstrap_password, out.bootstrap_password)
    const boot = {
      username: String(out2.bootstrap_username),
      password: String(out2.bootstrap_password),
    }
    const c = await mqtt.connectAsync(String(out2.url), {
      protocolVersion: 5,
      ...boot,
      clientId: 'bs-0123456789abcdef0123456789abcdef',
      reconnectPeriod: 0,
    })
    await c.endAsync()
    assert.equal((await cli(['sim', 'mqtt', 'stop', '--state', dir])).code, 0)
  } finally {
    if (pid !== undefined && pidAlive(pid)) process.kill(pid, 'SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a state dir with half of the dynsec files is refused, not silently re-keyed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-dynsec-half-'))
  try {
    const first = await startMosquitto({ stateDir: dir, dynsec: true })
    await first.stop()
    rmSync(join(dir, 'dynsec-server.password'))
    await assert.rejects(startMosquitto({ stateDir: dir, dynsec: true }), {
      code: 'ERR_SIM_STATE_DIR',
    })
    rmSync(join(dir, 'dynsec-admin.password'))
    await assert.rejects(startMosquitto({ stateDir: dir, dynsec: true }), {
      code: 'ERR_SIM_STATE_DIR',
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
