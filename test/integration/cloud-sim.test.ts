import assert from 'node:assert/strict'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { startCloudSim } from '../../hardware-sim/cloud/index.js'
import { processDir } from '../helpers/agent-process.js'
import { cli, run } from '../helpers/exec.js'

test('the simulated AWS IMDSv2 answers as the real one on the wire; its PKCS#7 verifies with openssl', async (t) => {
  await using sim = await startCloudSim({ kind: 'aws' })
  const u = (p: string) => `${sim.url}${p}`
  const doc = '/latest/dynamic/instance-identity/document'
  assert.equal((await fetch(u(doc))).status, 401) // IMDSv2 required: no token, no answer
  assert.equal((await fetch(u('/latest/api/token'), { method: 'PUT' })).status, 400) // TTL header required
  const ttl = { 'X-aws-ec2-metadata-token-ttl-seconds': '21601' }
  assert.equal((await fetch(u('/latest/api/token'), { method: 'PUT', headers: ttl })).status, 400)
  const fwd = { 'X-aws-ec2-metadata-token-ttl-seconds': '60', 'X-Forwarded-For': '10.0.0.1' }
  assert.equal((await fetch(u('/latest/api/token'), { method: 'PUT', headers: fwd })).status, 403)
  const tokenRes = await fetch(u('/latest/api/token'), {
    method: 'PUT',
    headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '1' },
  })
  assert.equal(tokenRes.status, 200)
  assert.equal(tokenRes.headers.get('x-aws-ec2-metadata-token-ttl-seconds'), '1')
  const token = await tokenRes.text()
  const withToken = { 'X-aws-ec2-metadata-token': token }
  const document = await (await fetch(u(doc), { headers: withToken })).text()
  assert.equal(JSON.parse(document).accountId, '123456789012')
  assert.equal(
    (await fetch(u(doc), { headers: { 'X-aws-ec2-metadata-token': 'forged' } })).status,
    401,
  )
  assert.equal(
    (await fetch(u('/latest/dynamic/instance-identity/nothing'), { headers: withToken })).status,
    404,
  )
  // The PKCS#7 answer is what `openssl smime -verify` accepts with the printed certificate.
  const pkcs7 = await (
    await fetch(u('/latest/dynamic/instance-identity/rsa2048'), { headers: withToken })
  ).text()
  const pem = `-----BEGIN PKCS7-----\n${pkcs7}\n-----END PKCS7-----\n`
  const dir = processDir('spiffe-edge-aws-wire-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'sig.pem'), pem)
  const v = await run('openssl', [
    'smime',
    '-verify',
    '-in',
    join(dir, 'sig.pem'),
    '-inform',
    'PEM',
    '-certfile',
    sim.trust,
    '-noverify',
  ])
  assert.equal(v.code, 0, v.stderr)
  assert.equal(v.stdout, document)
  // The token expires with its TTL.
  await new Promise((r) => setTimeout(r, 1500))
  assert.equal((await fetch(u(doc), { headers: withToken })).status, 401)
})

test('the simulated GCP metadata server needs Metadata-Flavor: Google and answers with it', async () => {
  await using sim = await startCloudSim({ kind: 'gcp' })
  const path = `${sim.url}/computeMetadata/v1/instance/service-accounts/default/identity`
  const no = await fetch(`${path}?audience=a`)
  assert.equal(no.status, 403)
  const flavor = { 'Metadata-Flavor': 'Google' }
  assert.equal((await fetch(path, { headers: flavor })).status, 400) // audience required
  assert.equal(
    (await fetch(`${path}?audience=a`, { headers: { ...flavor, 'X-Forwarded-For': '1.2.3.4' } }))
      .status,
    403,
  )
  assert.equal(
    (
      await fetch(
        `${sim.url}/computeMetadata/v1/instance/service-accounts/nobody@x/identity?audience=a`,
        { headers: flavor },
      )
    ).status,
    404,
  )
  const full = await fetch(`${path}?audience=a&format=full`, { headers: flavor })
  assert.equal(full.status, 200)
  assert.equal(full.headers.get('metadata-flavor'), 'Google')
  const claims = JSON.parse(Buffer.from((await full.text()).split('.')[1]!, 'base64url').toString())
  assert.equal(claims.aud, 'a')
  assert.equal(claims.google.compute_engine.project_id, 'edge-fleet-sim')
  const standard = await (await fetch(`${path}?audience=a`, { headers: flavor })).text()
  assert.equal(
    JSON.parse(Buffer.from(standard.split('.')[1]!, 'base64url').toString()).google,
    undefined,
  )
})

test('the simulated Azure IMDS needs Metadata: true and the query parameters', async () => {
  await using sim = await startCloudSim({ kind: 'azure' })
  const path = `${sim.url}/metadata/identity/oauth2/token`
  const meta = { Metadata: 'true' }
  const no = await fetch(`${path}?api-version=2018-02-01&resource=r`)
  assert.equal(no.status, 400)
  assert.equal(((await no.json()) as { error: string }).error, 'invalid_request')
  assert.equal((await fetch(`${path}?resource=r`, { headers: meta })).status, 400)
  assert.equal((await fetch(`${path}?api-version=2018-02-01`, { headers: meta })).status, 400)
  const ok = await fetch(`${path}?api-version=2018-02-01&resource=api%3A%2F%2Fx`, { headers: meta })
  assert.equal(ok.status, 200)
  const body = (await ok.json()) as {
    access_token: string
    resource: string
    token_type: string
    expires_on: string
  }
  assert.equal(body.token_type, 'Bearer')
  assert.equal(body.resource, 'api://x')
  const claims = JSON.parse(Buffer.from(body.access_token.split('.')[1]!, 'base64url').toString())
  assert.equal(claims.aud, 'api://x')
  assert.equal(claims.iss, `https://sts.windows.net/${claims.tid}/`)
})

test('sim cloud <kind> start/stop from the CLI: detached, recorded, keys kept across restarts', async (t) => {
  const dir = processDir('spiffe-edge-cloud-cli-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const state = join(dir, 'gcp')
  const start = await cli(['sim', 'cloud', 'gcp', 'start', '--state', state])
  assert.equal(start.code, 0, start.stderr)
  const info = JSON.parse(start.stdout) as { url: string; trust: string; pid: number }
  const jwks = readFileSync(info.trust, 'utf8')
  const again = await cli(['sim', 'cloud', 'gcp', 'start', '--state', state])
  assert.equal(JSON.parse(again.stdout).already_running, true)
  const stop = await cli(['sim', 'cloud', 'gcp', 'stop', '--state', state])
  assert.equal(stop.code, 0, stop.stderr)
  assert.ok(!existsSync(join(state, 'cloud-gcp.json')))
  const restarted = await cli(['sim', 'cloud', 'gcp', 'start', '--state', state])
  assert.equal(readFileSync(JSON.parse(restarted.stdout).trust, 'utf8'), jwks) // the same key
  assert.equal((await cli(['sim', 'cloud', 'gcp', 'stop', '--state', state])).code, 0)
  const none = await cli(['sim', 'cloud', 'gcp', 'stop', '--state', state])
  assert.equal(none.code, 1)
  assert.match(none.stderr, /ERR_SIM_NOT_RUNNING/)
  const bad = await cli([
    'sim',
    'cloud',
    'aws',
    'start',
    '--state',
    join(dir, 'aws'),
    '--identity',
    '[1]',
  ])
  assert.equal(bad.code, 2)
})
