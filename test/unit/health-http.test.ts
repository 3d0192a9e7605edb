import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test } from 'node:test'
import { ConfigReader } from '../../src/common/config.js'
import { healthChecksConfig, startHealthListener } from '../../src/common/health-http.js'

function get(
  port: number,
  path: string,
  method = 'GET',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => {
        body += d.toString()
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

test('[health_checks] as SPIRE writes it (quoted port, default paths); off unless listener_enabled', () => {
  const r = new ConfigReader('/')
  assert.equal(healthChecksConfig(r, {}), undefined)
  assert.equal(healthChecksConfig(r, { health_checks: { bind_port: '8080' } }), undefined)
  assert.deepEqual(
    healthChecksConfig(r, {
      health_checks: { listener_enabled: true, bind_address: '0.0.0.0', bind_port: '8080' },
    }),
    { bindAddress: '0.0.0.0', bindPort: 8080, livePath: '/live', readyPath: '/ready' },
  )
  assert.deepEqual(r.problems, [])
  healthChecksConfig(r, { health_checks: { listener_enabled: true, live_path: 'live', bogus: 1 } })
  assert.equal(r.problems.length, 2)
})

test('live and ready answer 200 or 503 from state; a check that throws is a failed check', async () => {
  let ready = false
  const h = await startHealthListener(
    { bindAddress: '127.0.0.1', bindPort: 0, livePath: '/live', readyPath: '/ready' },
    {
      live: () => ({ ok: true }),
      ready: () => {
        if (ready) return { ok: true, details: { agent: 'x' } }
        throw new Error('no state yet')
      },
    },
  )
  try {
    assert.equal((await get(h.port, '/live')).status, 200)
    const notReady = await get(h.port, '/ready')
    assert.equal(notReady.status, 503)
    assert.match(notReady.body, /no state yet/)
    ready = true
    assert.deepEqual(await get(h.port, '/ready?x=1'), { status: 200, body: '{"agent":"x"}' })
    assert.equal((await get(h.port, '/ready', 'HEAD')).status, 200)
    assert.equal((await get(h.port, '/ready', 'POST')).status, 405)
    assert.equal((await get(h.port, '/metrics')).status, 404)
  } finally {
    await h.close()
  }
})

test('a taken port is ERR_HEALTH_LISTENER with a remedy', async () => {
  const a = await startHealthListener(
    { bindAddress: '127.0.0.1', bindPort: 0, livePath: '/live', readyPath: '/ready' },
    { live: () => ({ ok: true }), ready: () => ({ ok: true }) },
  )
  try {
    await assert.rejects(
      startHealthListener(
        { bindAddress: '127.0.0.1', bindPort: a.port, livePath: '/live', readyPath: '/ready' },
        { live: () => ({ ok: true }), ready: () => ({ ok: true }) },
      ),
      (e: { code?: string; remedy?: string }) =>
        e.code === 'ERR_HEALTH_LISTENER' && /bind_port/.test(e.remedy ?? ''),
    )
  } finally {
    await a.close()
  }
})
