import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type IClientOptions } from 'mqtt'
import { startMosquitto, stopMosquittoDaemon } from '../../hardware-sim/mosquitto.js'
import { pidAlive } from '../../hardware-sim/process.js'
import { cli } from '../helpers/exec.js'

/** Subscribes, publishes and returns the payload that came back through the broker. */
async function roundTrip(url: string, extra: IClientOptions = {}): Promise<string> {
  const client = await mqtt.connectAsync(url, {
    protocolVersion: 5,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ...extra,
  })
  try {
    const topic = `spiffe-edge/test/${process.pid}/${Date.now()}`
    const received = new Promise<string>((resolve) => {
      client.on('message', (t, payload) => {
        if (t === topic) resolve(payload.toString())
      })
    })
    await client.subscribeAsync(topic, { qos: 1 })
    await client.publishAsync(topic, 'hello edge', { qos: 1 })
    return await Promise.race([
      received,
      sleep(5000, undefined, { ref: false }).then(() => assert.fail('no message within 5 s')),
    ])
  } finally {
    await client.endAsync()
  }
}

async function waitGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 100 && pidAlive(pid); i++) await sleep(20)
  return !pidAlive(pid)
}

test('mosquitto: plain MQTT v5 publish/subscribe round trip; dispose kills it', async () => {
  let pid: number
  {
    await using broker = await startMosquitto()
    pid = broker.pid
    assert.match(broker.url, /^mqtt:\/\/127\.0\.0\.1:\d+$/)
    assert.equal(broker.caFile, undefined)
    assert.equal(await roundTrip(broker.url), 'hello edge')
  }
  assert.equal(await waitGone(pid), true)
})

test('mosquitto: TLS round trip trusting only the generated CA', async () => {
  let pid: number
  let dir: string
  {
    await using broker = await startMosquitto({ tls: true })
    pid = broker.pid
    dir = broker.stateDir
    assert.match(broker.url, /^mqtts:\/\/127\.0\.0\.1:\d+$/)
    assert.ok(broker.caFile)
    const ca = readFileSync(broker.caFile)
    assert.equal(await roundTrip(broker.url, { ca: [ca] }), 'hello edge')
    // Without the CA the default trust store must reject the throwaway server certificate.
    await assert.rejects(
      mqtt.connectAsync(broker.url, {
        protocolVersion: 5,
        reconnectPeriod: 0,
        connectTimeout: 5000,
      }),
      (err: unknown) => {
        const code = String((err as { code?: unknown }).code)
        assert.match(code, /CERT|SELF_SIGNED|VERIFY/)
        return true
      },
    )
  }
  assert.equal(await waitGone(pid), true)
  assert.equal(existsSync(dir), false)
})

test('mosquitto: a busy explicit port gives ERR_SIM_PORT_IN_USE', async () => {
  const server: Server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const address = server.address()
    assert.ok(address && typeof address === 'object')
    await assert.rejects(startMosquitto({ port: address.port }), { code: 'ERR_SIM_PORT_IN_USE' })
  } finally {
    await new Promise((resolve) => server.close(resolve))
  }
})

test('mosquitto: a missing binary gives ERR_SIM_BINARY_MISSING', async () => {
  await assert.rejects(startMosquitto({ binary: '/nonexistent/bin/mosquitto' }), {
    code: 'ERR_SIM_BINARY_MISSING',
  })
})

test('mosquitto: stopping a daemon that is not running gives ERR_SIM_NOT_RUNNING', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-mqtt-test-'))
  try {
    await assert.rejects(stopMosquittoDaemon(dir), { code: 'ERR_SIM_NOT_RUNNING' })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('cli: sim mqtt start, publish, stop', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-mqtt-cli-'))
  const run = async (argv: string[]): Promise<{ code: number; json: Record<string, unknown> }> => {
    const r = await cli(['sim', ...argv])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim().split('\n').length, 1)
    return { code: r.code, json: JSON.parse(r.stdout) as Record<string, unknown> }
  }
  let pid: number | undefined
  try {
    const { json: started } = await run(['mqtt', 'start', '--state', dir, '--tls'])
    assert.equal(typeof started.pid, 'number')
    pid = started.pid as number
    assert.equal(started.state, dir)
    assert.equal(started.ca, join(dir, 'ca.pem'))
    assert.ok(typeof started.url === 'string' && started.url.startsWith('mqtts://127.0.0.1:'))
    assert.equal(existsSync(join(dir, 'mqtt.json')), true)
    const ca = readFileSync(started.ca)
    assert.equal(await roundTrip(started.url, { ca: [ca] }), 'hello edge')

    const { json: stopped } = await run(['mqtt', 'stop', '--state', dir])
    assert.deepEqual(stopped, { stopped: true, state: dir })
    assert.equal(await waitGone(pid), true)
    assert.equal(existsSync(join(dir, 'mqtt.json')), false)
    await assert.rejects(stopMosquittoDaemon(dir), { code: 'ERR_SIM_NOT_RUNNING' })
  } finally {
    if (pid !== undefined && pidAlive(pid)) process.kill(pid, 'SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
})
