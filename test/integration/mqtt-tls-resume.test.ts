/**
 * The connections of one node client share a TLS context and the broker's last session ticket:
 * the next bootstrap or agent connection resumes (no chain sent and verified again), and a ticket
 * never lets another broker skip verification.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { TLSSocket } from 'node:tls'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { brokerTls, MqttRpc } from '../../src/transport/mqtt/connection.js'

const connected = async (rpc: MqttRpc) => {
  const end = Date.now() + 10_000
  while (!rpc.client.connected && Date.now() < end) await sleep(20)
  return rpc.client.connected
}

const open = (url: string, tls: ReturnType<typeof brokerTls>, id: string) =>
  new MqttRpc(
    { url, clientId: id, sessionExpirySeconds: 0, maxPayload: 1 << 16, tls },
    `t/${id}/req`,
    `t/${id}/res`,
  )

test('MQTT over TLS: a second connection of one client resumes the broker session; another broker is still verified', async () => {
  await using a = await startMosquitto({ tls: true })
  await using b = await startMosquitto({ tls: true })
  const tls = brokerTls({ ca: readFileSync(a.caFile!) })
  const first = open(a.url, tls, 'bs-first')
  try {
    assert.ok(await connected(first))
    assert.equal((first.client.stream as TLSSocket).isSessionReused(), false)
    const end = Date.now() + 5000
    while (!tls.session && Date.now() < end) await sleep(20)
    assert.ok(tls.session, 'the broker sent no session ticket')
  } finally {
    await first.close()
  }
  const second = open(a.url, tls, 'bs-second')
  try {
    assert.ok(await connected(second))
    assert.equal((second.client.stream as TLSSocket).isSessionReused(), true)
  } finally {
    await second.close()
  }
  // Broker b has its own CA: a's ticket and a's CA get no connection there.
  const errors: string[] = []
  const other = open(b.url, tls, 'bs-other')
  other.client.on('error', (e) => errors.push(e.message))
  try {
    await sleep(1500)
    assert.equal(other.client.connected, false)
    assert.ok(errors.length > 0)
  } finally {
    await other.close()
  }
})
