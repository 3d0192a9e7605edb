/**
 * The side services of the Workload API endpoint (health, reflection v1 and v1alpha, Envoy SDS)
 * are registered at start but load their packages and protos on first use (issue 16: MiBs of
 * the agent's RSS): after start none of them is in memory; the first call loads and answers.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import * as sdsProto from '../../src/agent/workload-api/sds-proto.js'
import { startWorkloadApi } from '../../src/agent/workload-api/server.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { MemoryWorkloadSource } from '../helpers/workload-source.js'

const LAZY = [
  '/node_modules/@grpc/reflection/',
  '/node_modules/grpc-health-check/',
  '/node_modules/@grpc/proto-loader/',
]
const loaded = () => {
  const cache = Object.keys(createRequire(import.meta.url).cache)
  return LAZY.filter((p) => cache.some((f) => f.includes(p)))
}

/** One reflection request (raw ServerReflectionRequest bytes) on `path`; the raw answer. */
async function reflect(socket: string, path: string, req: Buffer): Promise<Buffer> {
  const c = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure())
  try {
    const call = c.makeBidiStreamRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
    )
    const got = new Promise<Buffer>((resolve, reject) => {
      call.once('data', (b: Buffer) => {
        call.end()
        resolve(b)
      })
      call.once('error', reject)
    })
    call.write(req)
    return await got
  } finally {
    c.close()
  }
}

test('health, reflection and SDS load on first use, then answer', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wl-lazy-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const socket = join(dir, 'api.sock')
  await using server = await startWorkloadApi({
    socketPath: socket,
    source: await MemoryWorkloadSource.create(),
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
  })
  assert.ok(server.socketPath)
  assert.deepEqual(loaded(), [], 'side-service packages loaded at start')
  const envoyLoaded = (sdsProto as { envoyProtosLoaded?: () => boolean }).envoyProtosLoaded
  assert.equal(typeof envoyLoaded, 'function')
  assert.equal(envoyLoaded!(), false, 'Envoy protos loaded at start')

  const client = workloadClient(`unix://${socket}`)
  t.after(() => client.close())
  assert.equal(await client.health(), 'SERVING')
  // list_services = 7: "*", on both versions (one parsed package serves both).
  const list = Buffer.concat([Buffer.from([0x3a, 1]), Buffer.from('*')])
  for (const v of ['v1', 'v1alpha']) {
    const text = (
      await reflect(socket, `/grpc.reflection.${v}.ServerReflection/ServerReflectionInfo`, list)
    ).toString('latin1')
    assert.match(text, /SpiffeWorkloadAPI/, v)
    assert.match(text, /grpc\.health\.v1\.Health/, v)
  }
  assert.deepEqual(loaded(), LAZY)
})

test('health Watch as the first call loads health and follows readiness', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wl-lazy-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const socket = join(dir, 'api.sock')
  let ready = true
  await using _server = await startWorkloadApi({
    socketPath: socket,
    source: await MemoryWorkloadSource.create(),
    attestors: [unixAttestor()],
    trustDomain: TrustDomain.parse('example.org'),
    ready: () => ready,
  })
  const c = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure())
  t.after(() => c.close())
  // HealthCheckRequest{service: ''} is empty; HealthCheckResponse{status = 1: SERVING(1) | NOT_SERVING(2)}.
  const call = c.makeServerStreamRequest(
    '/grpc.health.v1.Health/Watch',
    (b: Buffer) => b,
    (b: Buffer) => b,
    Buffer.alloc(0),
  )
  const seen: string[] = []
  const want = (hex: string) =>
    new Promise<void>((resolve) => {
      const check = () => (seen.includes(hex) ? resolve() : setTimeout(check, 20))
      check()
    })
  call.on('data', (b: Buffer) => seen.push(b.toString('hex')))
  call.on('error', () => {})
  await want('0801')
  ready = false
  await want('0802') // the 1 s readiness poll pushes it to the watcher
  call.cancel()
})
