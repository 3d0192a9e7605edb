/**
 * Calls that arrive together on one Workload API connection share one attestation; a call that
 * arrives after that attestation began gets its own, so no caller is served selectors read
 * before its call arrived. Real socket, real grpc-js client, real unix attestor underneath.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import * as grpc from '@grpc/grpc-js'
import { unixAttestor } from '../../src/agent/workload-api/attestors/unix.js'
import { startWorkloadApi } from '../../src/agent/workload-api/server.js'
import { workloadServiceDefinition } from '../../src/agent/workload-api/service.js'
import type { WorkloadAttestor } from '../../src/agent/workload-api/types.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { MemoryWorkloadSource } from '../helpers/workload-source.js'

const root = mkdtempSync(join(tmpdir(), 'wl-batch-'))
after(() => rmSync(root, { recursive: true, force: true }))

test('streams opened together on one connection share an attestation; later ones get their own', async () => {
  const source = await MemoryWorkloadSource.create()
  await source.addEntry({
    id: 'e1',
    spiffeId: 'spiffe://example.org/w',
    selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }],
  })
  const unix = unixAttestor()
  let runs = 0
  let groupsNow = 'a'
  // The real unix attestor, counted, plus a selector whose value the test changes between calls.
  const counted: WorkloadAttestor = {
    kind: 'WorkloadAttestor',
    name: 'unix',
    async attest(peer, signal) {
      runs++
      const sel = await unix.attest(peer, signal)
      return [...sel, { type: 'unix', value: `marker:${groupsNow}` }]
    },
  }
  const socket = join(root, 'api.sock')
  await using _api = {
    api: await startWorkloadApi({
      socketPath: socket,
      source,
      attestors: [counted],
      trustDomain: TrustDomain.parse('example.org'),
    }),
    async [Symbol.asyncDispose]() {
      await this.api.close()
    },
  }
  const Ctor = grpc.makeGenericClientConstructor(workloadServiceDefinition, 'SpiffeWorkloadAPI')
  const c = new Ctor(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  ) as unknown as grpc.Client &
    Record<string, (...a: unknown[]) => grpc.ClientReadableStream<Buffer>>
  const md = new grpc.Metadata()
  md.set('workload.spiffe.io', 'true')
  const first = () =>
    new Promise<number>((resolve, reject) => {
      const call = c.FetchX509SVID!(Buffer.alloc(0), md)
      call.once('data', (b: Buffer) => {
        resolve(b.length)
        call.cancel()
      })
      call.on('error', (e: grpc.ServiceError) => e.code !== grpc.status.CANCELLED && reject(e))
    })
  try {
    await first() // connected
    runs = 0
    const sizes = await Promise.all(Array.from({ length: 50 }, first))
    assert.ok(sizes.every((n) => n > 0))
    assert.ok(runs >= 1 && runs < 50, `50 streams at once: ${runs} attestations`)

    // One after another: each call arrives after the previous attestation, so each is attested.
    runs = 0
    for (let i = 0; i < 5; i++) await first()
    assert.equal(runs, 5)

    // What the attestor sees changes between calls: a later call is never served the old state.
    groupsNow = 'b'
    await source.addEntry({
      id: 'e2',
      spiffeId: 'spiffe://example.org/only-b',
      selectors: [{ type: 'unix', value: 'marker:b' }],
    })
    const withB = await first()
    groupsNow = 'c'
    const withoutB = await first()
    assert.ok(withB > withoutB, 'the marker:b identity only while the attestor reported b')
  } finally {
    c.close()
  }
})
