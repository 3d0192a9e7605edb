import assert from 'node:assert/strict'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ensureCloudKeys, writeServiceAccountFile } from '../../hardware-sim/cloud/keys.js'
import { DEFAULT_IDENTITY, serveCloudMetadata } from '../../hardware-sim/cloud/service.js'
import { CloudAttestationError } from '../../src/attestors/cloud/common.js'
import { GcpApi, type GcpApiConfig } from '../../src/attestors/cloud/gcp/compute.js'
import { parseGcpServerConfig } from '../../src/attestors/cloud/gcp/server.js'

const refused = (reason: string, re?: RegExp) => (e: unknown) =>
  e instanceof CloudAttestationError &&
  e.reason === reason &&
  (reason === 'api' ? e.code === 'ERR_CLOUD_API' : e.code === 'ERR_ATTESTATION_FAILED') &&
  (re === undefined || re.test(e.message))

const close = (s: Server) =>
  new Promise<void>((r) => {
    s.closeAllConnections()
    s.close(() => r())
  })

async function simRig(t: { after: (f: () => Promise<void> | void) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-gcp-api-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = await ensureCloudKeys(dir, 'gcp')
  const { server, port } = await serveCloudMetadata('gcp', keys, {}, 0)
  t.after(() => close(server))
  const url = `http://127.0.0.1:${port}`
  const file = writeServiceAccountFile(dir, keys, DEFAULT_IDENTITY.apiServiceAccount, url)
  writeFileSync(join(dir, 'jwks.json'), readFileSync(keys.trustFile))
  return { dir, url, file }
}

const I = DEFAULT_IDENTITY
const base = { projectid_allow_list: ['edge-fleet-sim'], jwks_file: 'jwks.json' }

test('gcp_iit config: lookups absent without use_instance_metadata; their keys, a missing key file or a plain-http remote endpoint refuse the config', async (t) => {
  const { dir, file } = await simRig(t)
  assert.equal(parseGcpServerConfig(base, dir, {}).api, undefined)
  assert.throws(
    () => parseGcpServerConfig({ ...base, allowed_label_keys: ['fleet'] }, dir, {}),
    /allowed_label_keys: needs use_instance_metadata = true/,
  )
  // No file anywhere in ADC's order: the GCE metadata server (GCE_METADATA_HOST if set).
  assert.deepEqual(
    parseGcpServerConfig({ ...base, use_instance_metadata: true }, dir, { HOME: dir }).api
      ?.credentials,
    { kind: 'metadata', url: 'http://metadata.google.internal' },
  )
  assert.deepEqual(
    parseGcpServerConfig({ ...base, use_instance_metadata: true }, dir, {
      HOME: dir,
      GCE_METADATA_HOST: '127.0.0.1:8080',
    }).api?.credentials,
    { kind: 'metadata', url: 'http://127.0.0.1:8080' },
  )
  assert.throws(
    () =>
      parseGcpServerConfig(
        { ...base, use_instance_metadata: true, gce_metadata_url: 'http://meta.example.com' },
        dir,
        { HOME: dir },
      ),
    /gce_metadata_url: .* must be https/,
  )
  const fromEnv = parseGcpServerConfig({ ...base, use_instance_metadata: true }, dir, {
    GOOGLE_APPLICATION_CREDENTIALS: file,
  })
  const cred = fromEnv.api?.credentials
  assert.equal(cred?.kind === 'service_account' && cred.clientEmail, I.apiServiceAccount)
  assert.equal(fromEnv.api?.maxMetadataValueSize, 128)
  const on = { ...base, use_instance_metadata: true, service_account_file: file }
  assert.throws(
    () => parseGcpServerConfig({ ...on, compute_endpoint: 'http://compute.example.com' }, dir, {}),
    /compute_endpoint: .* must be https/,
  )
  const sa = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  writeFileSync(
    join(dir, 'remote.json'),
    JSON.stringify({ ...sa, token_uri: 'http://oauth2.example.com/token' }),
  )
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'remote.json' }, dir, {}),
    /token_uri: .* must be https/,
  )
  writeFileSync(join(dir, 'user.json'), JSON.stringify({ ...sa, type: 'authorized_user' }))
  writeFileSync(join(dir, 'other.json'), JSON.stringify({ ...sa, type: 'external_account' }))
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'other.json' }, dir, {}),
    /not "service_account" or "authorized_user"/,
  )
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'user.json' }, dir, {}),
    /client_secret is missing/,
  )
})

test('GcpApi against the simulated Google APIs: selectors; an over-long allowed metadata value, an unknown instance, another ID refuse', async (t) => {
  const { dir, url, file } = await simRig(t)
  const cfg = parseGcpServerConfig(
    {
      ...base,
      use_instance_metadata: true,
      service_account_file: file,
      allowed_label_keys: ['env'],
      allowed_metadata_keys: ['role', 'startup-script'],
      compute_endpoint: url,
    },
    dir,
    {},
  ).api as GcpApiConfig
  const api = new GcpApi(cfg)
  const now = Date.now()
  const sels = (await api.selectors(I.projectId, I.zone, I.instanceName, I.gcpInstanceId, now)).map(
    (s) => s.value,
  )
  assert.deepEqual(sels.sort(), [
    'label:env:prod',
    'metadata:role:gateway',
    'metadata:startup-script:#!/bin/sh\necho hi',
    'sa:471104711047-compute@developer.gserviceaccount.com',
    'tag:edge-gateway',
    'tag:http-server',
  ])
  await assert.rejects(
    new GcpApi({ ...cfg, maxMetadataValueSize: 10 }).selectors(
      I.projectId,
      I.zone,
      I.instanceName,
      I.gcpInstanceId,
      now,
    ),
    refused('instance', /"startup-script" is 17 bytes, over max_metadata_value_size 10/),
  )
  await assert.rejects(
    api.selectors(I.projectId, I.zone, 'ghost-1', I.gcpInstanceId, now),
    refused('instance', /knows no such instance/),
  )
  await assert.rejects(
    api.selectors(I.projectId, I.zone, I.instanceName, '1234', now),
    refused('instance', /deleted and recreated/),
  )
})

test('GcpApi: a cached access token the API no longer takes is exchanged again once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-gcp-api-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = await ensureCloudKeys(dir, 'gcp')
  const first = await serveCloudMetadata('gcp', keys, {}, 0)
  const url = `http://127.0.0.1:${first.port}`
  const file = writeServiceAccountFile(dir, keys, I.apiServiceAccount, url)
  writeFileSync(join(dir, 'jwks.json'), readFileSync(keys.trustFile))
  const cfg = parseGcpServerConfig(
    { ...base, use_instance_metadata: true, service_account_file: file, compute_endpoint: url },
    dir,
    {},
  ).api as GcpApiConfig
  const api = new GcpApi(cfg)
  const get = () => api.selectors(I.projectId, I.zone, I.instanceName, I.gcpInstanceId, Date.now())
  assert.ok((await get()).length > 0)
  // A restarted API forgets the tokens it issued: the cached one now answers 401.
  await close(first.server)
  // (Let the client see its keep-alive socket closed: a race of this test, not the code's.)
  await sleep(200)
  const second = await serveCloudMetadata('gcp', keys, {}, first.port)
  t.after(() => close(second.server))
  assert.ok((await get()).some((s) => s.value === 'tag:edge-gateway'))
})

test('GcpApi bounds: an answer over 1 MiB and an API that never answers refuse as [api] within the deadline', async (t) => {
  const { dir, url, file } = await simRig(t)
  const huge = createServer((req, res) => {
    if (req.url === '/hang/x') return // never answers
    res.writeHead(200, { 'Content-Type': 'application/json' })
    res.end(Buffer.alloc(2 * 1024 * 1024, 0x20))
  })
  await new Promise<void>((r) => huge.listen(0, '127.0.0.1', () => r()))
  t.after(() => close(huge))
  const port = (huge.address() as { port: number }).port
  const cfg = parseGcpServerConfig(
    {
      ...base,
      use_instance_metadata: true,
      service_account_file: file,
      compute_endpoint: url,
      api_timeout_ms: 1500,
    },
    dir,
    {},
  ).api as GcpApiConfig
  await assert.rejects(
    new GcpApi({ ...cfg, computeEndpoint: `http://127.0.0.1:${port}` }).selectors(
      I.projectId,
      I.zone,
      I.instanceName,
      I.gcpInstanceId,
      Date.now(),
    ),
    refused('api', /over 1048576/),
  )
  const started = Date.now()
  await assert.rejects(
    new GcpApi({
      ...cfg,
      credentials: { ...cfg.credentials, tokenUri: `http://127.0.0.1:${port}/hang/x` } as never,
    }).selectors(I.projectId, I.zone, I.instanceName, I.gcpInstanceId, Date.now()),
    refused('api', /OAuth2 token exchange .*no answer in time/),
  )
  assert.ok(Date.now() - started < 5000, `refused after ${Date.now() - started} ms`)
})

test('gcp_iit credentials files: a file that is not JSON does not quote its secrets in the config error; devices, oversize and world-writable files refuse', async (t) => {
  const { dir } = await simRig(t)
  const on = { ...base, use_instance_metadata: true }
  const secret = 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASC'
  writeFileSync(join(dir, 'broken.json'), `{"type": "service_account", "private_key": ${secret}}`)
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'broken.json' }, dir, {}),
    (e: Error) => /broken\.json: not JSON/.test(e.message) && !e.message.includes('MIIE'),
  )
  assert.throws(
    () => parseGcpServerConfig(on, dir, { GOOGLE_APPLICATION_CREDENTIALS: '/dev/zero' }),
    /\/dev\/zero: not a regular file/,
  )
  writeFileSync(join(dir, 'big.json'), `{"x": "${'a'.repeat(70 * 1024)}"}`)
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'big.json' }, dir, {}),
    /big\.json: over 65536 bytes/,
  )
  writeFileSync(join(dir, 'open.json'), '{}', { mode: 0o666 })
  chmodSync(join(dir, 'open.json'), 0o666)
  assert.throws(
    () => parseGcpServerConfig({ ...on, service_account_file: 'open.json' }, dir, {}),
    /open\.json: writable by anyone/,
  )
})
