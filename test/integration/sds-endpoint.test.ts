import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { startWorkloadApi } from '../../src/agent/workload-api/server.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import {
  decodeSecret,
  decodeSpiffeValidator,
  ENVOY_NODE,
  EnvoySdsClient,
} from '../helpers/envoy-sds-client.js'
import { MemoryWorkloadSource, sel } from '../helpers/workload-source.js'

const root = mkdtempSync(join(tmpdir(), 'sds-ep-'))
after(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const UID = process.getuid!()

/**
 * The SDS service on a real Workload API endpoint (socket, SO_PEERCRED, unix attestor) over an
 * in-memory source, for what a real server cannot show yet: federated bundles in ALL, an entry
 * removed mid-stream, subscriptions released when Envoy goes away, malformed requests.
 */
async function fixture(over: Partial<Parameters<typeof startWorkloadApi>[0]> = {}) {
  const source = await MemoryWorkloadSource.create('example.org', ['federated.test', 'unused.test'])
  const socketPath = join(root, `s${++n}`, 'api.sock')
  const server = await startWorkloadApi({
    socketPath,
    source,
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
    ...over,
  })
  const client = new EnvoySdsClient(socketPath)
  return {
    source,
    socketPath,
    client,
    async [Symbol.asyncDispose]() {
      client.close()
      await server.close()
    },
  }
}

test('ALL and spiffe://<td> carry the federated bundles the entry federates with, no others', async () => {
  await using f = await fixture()
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/w',
    selectors: [sel(`unix:uid:${UID}`)],
    federatesWith: ['federated.test'],
  })
  const r = await f.client.fetch({
    node: ENVOY_NODE,
    resource_names: ['ALL', 'spiffe://federated.test'],
  })
  const m = new Map(r.resources.map((a) => [decodeSecret(a).name, decodeSecret(a)]))
  const all = decodeSpiffeValidator(
    m.get('ALL')!.validation_context!.custom_validator_config!.typed_config,
  )
  assert.deepEqual(
    all.trust_domains.map((d) => d.name),
    ['example.org', 'federated.test'],
  )
  const fed = decodeSpiffeValidator(
    m.get('spiffe://federated.test')!.validation_context!.custom_validator_config!.typed_config,
  )
  const pem = fed.trust_domains[0]!.trust_bundle.inline_bytes.toString()
  assert.deepEqual(new X509Certificate(pem).raw, Buffer.from(f.source.caOf('federated.test')))
  await assert.rejects(
    f.client.fetch({ resource_names: ['spiffe://unused.test'] }),
    /not authorized/,
  )
})

test('an entry removed mid-stream ends it PERMISSION_DENIED; a new entry is pushed first', async () => {
  await using f = await fixture()
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/a',
    selectors: [sel(`unix:uid:${UID}`)],
  })
  const s = f.client.stream()
  s.send({ resource_names: [] })
  const r0 = await s.response(0)
  s.send({ resource_names: [], version_info: r0.version_info, response_nonce: r0.nonce })
  await f.source.addEntry({
    id: 'e2',
    spiffeId: 'spiffe://example.org/b',
    selectors: [sel(`unix:uid:${UID}`)],
  })
  const r1 = await s.response(1)
  assert.equal(Number(r1.version_info), Number(r0.version_info) + 1)
  assert.ok(r1.resources.some((a) => decodeSecret(a).name === 'spiffe://example.org/b'))
  f.source.removeEntry('e1')
  f.source.removeEntry('e2')
  const e = await s.failure()
  assert.equal(e.code, grpc.status.PERMISSION_DENIED)
})

test('streams release their subscriptions when Envoy leaves or half-closes', async () => {
  await using f = await fixture()
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/a',
    selectors: [sel(`unix:uid:${UID}`)],
  })
  const base = f.source.subscribers
  const streams = Array.from({ length: 5 }, () => f.client.stream())
  for (const s of streams) s.send({ resource_names: ['default'] })
  for (const s of streams) await s.response(0)
  assert.equal(f.source.subscribers, base + 5)
  for (const s of streams.slice(0, 4)) s.close()
  // Half-close: the agent ends the stream with OK, as SPIRE does on EOF.
  const last = streams[4]!
  last.halfClose()
  const deadline = Date.now() + 10_000
  while (f.source.subscribers !== base && Date.now() < deadline) await sleep(20)
  assert.equal(f.source.subscribers, base)
  while (!last.ended && !last.error && Date.now() < deadline) await sleep(20)
  assert.equal(last.error, undefined)
  assert.ok(last.ended)
})

test('a request that is not a DiscoveryRequest is INVALID_ARGUMENT', async () => {
  await using f = await fixture()
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/a',
    selectors: [sel(`unix:uid:${UID}`)],
  })
  const c = new grpc.Client(`unix:${f.socketPath}`, grpc.credentials.createInsecure())
  try {
    const status = await new Promise<grpc.ServiceError>((resolve) => {
      c.makeUnaryRequest(
        '/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff]), // field 1 with a length running past the end
        (err) => resolve(err!),
      )
    })
    assert.equal(status.code, grpc.status.INVALID_ARGUMENT, status.message)
  } finally {
    c.close()
  }
})

test('the endpoint serves the [agent.sds] names it is given', async () => {
  await using f = await fixture({
    sds: {
      defaultSvidName: 'my-svid',
      defaultBundleName: 'my-ca',
      defaultAllBundlesName: 'my-all',
      disableSpiffeCertValidation: false,
    },
  })
  await f.source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/a',
    selectors: [sel(`unix:uid:${UID}`)],
  })
  const r = await f.client.fetch({
    node: ENVOY_NODE,
    resource_names: ['my-svid', 'my-ca', 'my-all'],
  })
  assert.deepEqual(r.resources.map((a) => decodeSecret(a).name).sort(), [
    'my-all',
    'my-ca',
    'my-svid',
  ])
  await assert.rejects(f.client.fetch({ resource_names: ['default'] }), /not authorized/)
})
