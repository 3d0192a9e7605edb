import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { copyFileSync, cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { loadBetterSqlite3 } from '../../src/common/sqlite.js'
import { codec } from '../../src/transport/proto.js'
import { fetchValidSvids, processDir } from '../helpers/agent-process.js'
import { type CliProcess, startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'
import { type Recorded, type Spy, serverMqttToml } from '../helpers/mqtt.js'
import { agentMqttTpmToml, serverTpmToml, startMqttTpmRig } from '../helpers/mqtt-tpm.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(what: string, ms: number, ok: () => boolean): Promise<void> {
  const end = Date.now() + ms
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

/** The log lines of one process that carry `msg`. */
function lines(p: CliProcess, msg: string): Record<string, unknown>[] {
  return p
    .stderr()
    .split('\n')
    .filter((l) => l.includes(`"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}

/** Until a server answers through the broker: a round 0 frame (stateless) on a fresh session. */
async function serving(spy: Spy, prefix: string): Promise<void> {
  for (let i = 0; i < 60; i++) {
    const id = `bs-${randomBytes(16).toString('hex')}`
    const res = `${prefix}/v1/bootstrap/${id}/res`
    const from = spy.seen.length
    const probe = codec.mqttAttestRequest.encode({
      nonce: new Uint8Array(randomBytes(16)),
      round: 0,
      step: new Uint8Array(),
    })
    await spy.client.publishAsync(`${prefix}/v1/bootstrap/${id}/req`, Buffer.from(probe), {
      qos: 1,
      properties: { responseTopic: res, correlationData: Buffer.from('probe') },
    })
    for (const end = Date.now() + 500; Date.now() < end; await sleep(50))
      if (spy.seen.slice(from).some((r) => r.topic === res)) return
  }
  throw new Error('no server answers through the broker')
}

const attestFrame = (r: Recorded) => {
  try {
    return codec.mqttAttestRequest.decode(r.payload)
  } catch {
    return undefined
  }
}

test('two server replicas on one datastore behind one $share group: the TPM challenge sent by one is answered by the other, in one attempt; replays refused', {
  timeout: 240_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-mqtt-replicas-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  await using rig = await startMqttTpmRig()
  const { sim, broker, spy, ekHash } = rig
  const datastore = join(dir, 'shared', 'datastore.sqlite3')
  const serverConf = (name: string) => {
    const f = join(dir, `server-${name}.conf`)
    writeFileSync(
      f,
      `[server]\ntrust_domain = "example.org"\ndata_dir = "./${name}"\nadmin_socket = "./${name}/admin.sock"\nlog_level = "info"\n` +
        `${serverMqttToml(broker, `client_id = "replica-${name}"\n`)}\n[plugins.KeyManager.disk]\n` +
        `[plugins.DataStore.sql]\ndatabase_type = "sqlite3"\nconnection_string = "./shared/datastore.sqlite3"\n` +
        serverTpmToml(rig),
    )
    return f
  }
  const run = (name: string) =>
    startCli(['server', 'run', '--config', serverConf(name), '--port', '0'], t)

  // Replica a makes the CA (its keys, the CA journal in the shared datastore) and the MQTT key;
  // replica b gets copies of those files in a data dir of its own (see docs/transport/mqtt.md).
  let a = await run('a')
  const sockA = String(a.first.admin_socket)
  mkdirSync(join(dir, 'b'), { mode: 0o700 })
  cpSync(join(dir, 'a', 'keys'), join(dir, 'b', 'keys'), { recursive: true })
  copyFileSync(join(dir, 'a', 'mqtt-encryption.key'), join(dir, 'b', 'mqtt-encryption.key'))
  const bundle = join(dir, 'bundle.pem')
  writeFileSync(bundle, (await cli(['server', 'bundle', 'show', '--admin-socket', sockA])).stdout)
  const admin = (...args: string[]) => cli(['server', ...args, '--admin-socket', sockA])
  for (const args of [
    [
      '--node',
      '--spiffeID',
      'spiffe://example.org/fleet/sim',
      '--selector',
      `tpm:ek_hash:${ekHash}`,
    ],
    [
      '--parentID',
      'spiffe://example.org/fleet/sim',
      '--spiffeID',
      'spiffe://example.org/fleet/app',
      '--selector',
      `unix:uid:${process.getuid!()}`,
    ],
  ])
    assert.equal((await admin('entry', 'create', ...args)).code, 0)

  // Only a is in the group when the params come. Once the agent published them its TPM work for
  // the params is done: the TPM is held (SIGSTOP) so the agent cannot answer the challenge before
  // a has stopped and b has joined the group.
  const agentConf = join(dir, 'agent.conf')
  writeFileSync(
    agentConf,
    `[agent]\ntrust_domain = "example.org"\nserver_address = "${broker.url}"\ndata_dir = "./agent"\n` +
      `socket_path = "./agent/public/api.sock"\ntrust_bundle_path = "${bundle}"\nlog_level = "info"\n` +
      agentMqttTpmToml(rig),
  )
  const isParams = (r: Recorded) => r.topic.endsWith('/req') && attestFrame(r)?.round === 1
  const params = spy.next(isParams, 60_000).then((r) => {
    process.kill(sim.pid, 'SIGSTOP')
    return r
  })
  t.after(() => {
    try {
      process.kill(sim.pid, 'SIGCONT')
    } catch {
      // gone already
    }
  })
  const agentP = startCli(['agent', 'run', '--config', agentConf], t)
  const paramsFrame = await params
  const bootstrap = paramsFrame.topic.split('/')[3]!
  const resTopic = paramsFrame.responseTopic!
  const challenge = await spy.next(
    (r) => r.topic === resTopic && r.correlation?.equals(paramsFrame.correlation!) === true,
    30_000,
  )
  assert.ok(challenge)
  await until(
    'a to answer the params',
    10_000,
    () => lines(a, 'MQTT attestation params answered').length > 0,
  )
  a.child.kill('SIGTERM')
  assert.equal(await a.exited, 0)
  const b = await run('b')
  const prefix = paramsFrame.topic.split('/v1/')[0]!
  await serving(spy, prefix) // b alone in the group now
  process.kill(sim.pid, 'SIGCONT')

  const agent = await agentP
  const agentId = `spiffe://example.org/spire/agent/tpm/${ekHash}`
  assert.equal(agent.first.agent_id, agentId)
  // a sent the challenge, b took the answer and issued: one attempt, no unknown_session.
  const aParams = lines(a, 'MQTT attestation params answered')
  assert.deepEqual(
    aParams.map((l) => [l.replica, l.step]),
    [['replica-a', 'challenge']],
  )
  const bRound = lines(b, 'MQTT attestation round answered')
  assert.deepEqual(
    bRound.map((l) => [l.replica, l.round, l.step]),
    [['replica-b', 2, 'result']],
  )
  assert.equal(lines(b, 'agent attested').length, 1)
  assert.equal(lines(a, 'agent attested').length, 0)
  const attempts = new Set(
    spy.seen
      .filter((r) => r.topic.includes(`/bootstrap/${bootstrap}/req`))
      .map((r) => attestFrame(r))
      .filter((f) => f && f.round === 1)
      .map((f) => Buffer.from(f!.nonce).toString('hex')),
  )
  assert.equal(attempts.size, 1, 'attestation took more than one attempt')
  assert.doesNotMatch(agent.stderr() + b.stderr(), /unknown_session/)

  // The workload gets its SVID through the agent (sync and issuance by b).
  const sockPath = String(agent.first.socket_path)
  let ids: string[] = []
  for (let i = 0; i < 60 && !ids.includes('spiffe://example.org/fleet/app'); i++) {
    ids = await fetchValidSvids(sockPath).catch(() => [])
    if (!ids.length) await sleep(500)
  }
  assert.deepEqual(ids, ['spiffe://example.org/fleet/app'])

  // Replays reach the other replica: b stops, a comes back (same data dir) and alone gets them.
  const round2 = spy.seen.find(
    (r) => r.topic.includes(`/bootstrap/${bootstrap}/req`) && attestFrame(r)?.round === 2,
  )!
  assert.ok(round2, 'the round 2 frame was recorded')
  const answer = spy.seen.find(
    (r) => r.topic === resTopic && r.correlation?.equals(round2.correlation!) === true,
  )!
  b.child.kill('SIGTERM')
  assert.equal(await b.exited, 0)
  a = await run('a')
  await serving(spy, prefix) // a alone in the group now
  const node = () => {
    const Db = loadBetterSqlite3()
    const db = new Db(datastore, { readonly: true })
    try {
      return db
        .prepare('SELECT spiffe_id, cert_serial, created_at, updated_at FROM attested_nodes')
        .all()
    } finally {
      db.close()
    }
  }
  const before = node()
  assert.equal(before.length, 1)
  const replay = async (payload: Buffer, corr: Buffer) => {
    const from = spy.seen.length
    await spy.client.publishAsync(round2.topic, payload, {
      qos: 1,
      properties: { responseTopic: resTopic, correlationData: corr },
    })
    await sleep(3000)
    return spy.seen.slice(from).filter((r) => r.topic === resTopic)
  }
  // The same frame: what was answered is answered the same (the recorded signed bytes), nothing
  // is run again.
  const same = await replay(round2.payload, round2.correlation!)
  assert.equal(same.length, 1)
  assert.ok(same[0]!.payload.equals(answer.payload), 'a replayed round got a new answer')
  assert.equal(lines(a, 'MQTT attestation frame seen before; its answer sent again').length, 1)
  // An altered frame under the same attempt and round: nothing.
  const f = codec.mqttAttestRequest.decode(round2.payload)
  const step = Buffer.from(f.step)
  step[step.length - 1]! ^= 1
  const altered = Buffer.from(codec.mqttAttestRequest.encode({ ...f, step }))
  assert.deepEqual(await replay(altered, Buffer.from('altered')), [])
  assert.equal(lines(a, 'MQTT attestation frame replayed or altered; dropped').length, 1)
  // The round's frame under a fresh nonce (a round nobody began): refused, signed.
  const forged = Buffer.from(
    codec.mqttAttestRequest.encode({ ...f, nonce: new Uint8Array(randomBytes(16)) }),
  )
  const refused = await replay(forged, Buffer.from('forged'))
  assert.equal(refused.length, 1)
  assert.equal(codec.signedResponse.decode(refused[0]!.payload).errorReason, 'unknown_session')
  // Nothing issued or stored again: the node row is the one b wrote.
  assert.equal(lines(a, 'agent attested').length, 0)
  assert.deepEqual(node(), before)
  const row = before[0] as { spiffe_id: string; created_at: number; updated_at: number }
  assert.equal(row.spiffe_id, agentId)
  assert.equal(row.created_at, row.updated_at)

  agent.child.kill('SIGTERM')
  a.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  assert.equal(await a.exited, 0)
})
