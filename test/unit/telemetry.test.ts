import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { test } from 'node:test'
import { Counter } from 'prom-client'
import { parseAgentConfig } from '../../src/agent/config.js'
import { ConfigReader } from '../../src/common/config.js'
import { newRegistry, startMetricsListener, telemetryConfig } from '../../src/common/telemetry.js'
import { isSpiffeEdgeError } from '../../src/errors.js'
import { parseServerConfig } from '../../src/server/config.js'

test('[telemetry.Prometheus] as SPIRE writes it (quoted port too); other sinks named as unsupported', () => {
  const r = new ConfigReader('/')
  assert.equal(telemetryConfig(r, {}), undefined)
  assert.deepEqual(telemetryConfig(r, { telemetry: { Prometheus: { port: '9988' } } }), {
    host: 'localhost',
    port: 9988,
  })
  assert.deepEqual(r.problems, [])
  telemetryConfig(r, { telemetry: { Prometheus: { host: '0.0.0.0' }, Statsd: [], bogus: 1 } })
  assert.deepEqual(r.problems, [
    'telemetry.Statsd: not supported (only Prometheus is)',
    'telemetry.bogus: unknown key',
    'telemetry.Prometheus.port: required',
  ])
  const r2 = new ConfigReader('/')
  telemetryConfig(r2, { telemetry: { Prometheus: { port: 70000, extra: true } } })
  assert.equal(r2.problems.length, 2)
})

test('server and agent configs take [telemetry]; without it there is no listener', () => {
  const s = parseServerConfig(
    'server.trust_domain = "example.org"\n[telemetry.Prometheus]\nhost = "127.0.0.1"\nport = 9988\n',
    '/x/server.conf',
  )
  assert.deepEqual(s.telemetry, { host: '127.0.0.1', port: 9988 })
  const a = parseAgentConfig(
    'agent.trust_domain = "example.org"\nagent.insecure_bootstrap = true\n',
    '/x/agent.conf',
  )
  assert.equal(a.telemetry, undefined)
})

test('/metrics: GET only, text exposition from the registry, other paths 404', async () => {
  const registry = newRegistry('spire_agent_')
  new Counter({ name: 'spire_agent_test_total', help: 't', registers: [registry] }).inc(3)
  const l = await startMetricsListener({ host: '127.0.0.1', port: 0 }, registry)
  try {
    const ok = await fetch(`http://127.0.0.1:${l.port}/metrics`)
    assert.equal(ok.status, 200)
    const text = await ok.text()
    assert.match(text, /^spire_agent_test_total 3$/m)
    assert.match(text, /^spire_agent_process_cpu_seconds_total /m)
    assert.equal(
      (await fetch(`http://127.0.0.1:${l.port}/metrics`, { method: 'POST', body: 'x' })).status,
      405,
    )
    assert.equal((await fetch(`http://127.0.0.1:${l.port}/`)).status, 404)
  } finally {
    await l.close()
  }
})

test('a taken port is ERR_METRICS_LISTENER with a remedy naming the key', async () => {
  const holder = createServer()
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()))
  const port = (holder.address() as { port: number }).port
  try {
    await assert.rejects(
      startMetricsListener({ host: '127.0.0.1', port }, newRegistry('spire_server_')),
      (e: unknown) =>
        isSpiffeEdgeError(e) &&
        e.code === 'ERR_METRICS_LISTENER' &&
        /telemetry\.Prometheus\.port/.test(e.remedy ?? ''),
    )
  } finally {
    holder.close()
  }
})
