import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { request } from 'node:http'
import { test } from 'node:test'
import { parseOidcConfig } from '../../src/cli/oidc/config.js'
import { startOidcProvider } from '../../src/cli/oidc/provider.js'
import { type KeySource, signingKeys } from '../../src/cli/oidc/source.js'
import { SpiffeEdgeError } from '../../src/errors.js'

function get(port: number, path: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, headers: { host: 'localhost' } },
      (res) => {
        let text = ''
        res.on('data', (c: Buffer) => {
          text += c.toString()
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }))
      },
    )
    req.on('error', reject)
    req.end()
  })
}

const jwk = (kid: string) => ({
  ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' }),
  kid,
})

test('the provider: 503 until keys are fetched, then the last good keys through a source outage, logged once', async () => {
  const config = parseOidcConfig(
    '[oidc]\ndomains = ["localhost"]\ninsecure_http = true\nbind_port = 0\npoll_interval = "1s"\n' +
      '[oidc.server_api]\nadmin_socket = "/nonexistent.sock"\n',
    'o.conf',
  )
  let doc: string | undefined
  const source: KeySource = {
    async fetch() {
      if (doc === undefined) {
        throw new SpiffeEdgeError('ERR_OIDC_SOURCE', 'down', { remedy: 'start it' })
      }
      return signingKeys(doc)
    },
    close() {},
  }
  const warnings: string[] = []
  const provider = await startOidcProvider(config, source, (level, msg) => {
    if (level === 'warn') warnings.push(msg)
  })
  try {
    assert.equal((await get(provider.port, '/keys')).status, 503)
    doc = JSON.stringify({ keys: [jwk('k1')] })
    await provider.refresh()
    const ok = await get(provider.port, '/keys')
    assert.equal(ok.status, 200)
    assert.deepEqual(
      (JSON.parse(ok.text) as { keys: { kid: string }[] }).keys.map((k) => k.kid),
      ['k1'],
    )
    doc = undefined // the source goes away
    await provider.refresh()
    await provider.refresh()
    const stale = await get(provider.port, '/keys')
    assert.equal(stale.status, 200)
    assert.equal(stale.text, ok.text)
    assert.equal(warnings.length, 2, 'one warning before the first fetch, one for the outage')
    doc = JSON.stringify({ keys: [jwk('k1'), jwk('k2')] })
    await provider.refresh()
    const both = JSON.parse((await get(provider.port, '/keys')).text) as { keys: unknown[] }
    assert.equal(both.keys.length, 2)
  } finally {
    await provider.close()
  }
})
