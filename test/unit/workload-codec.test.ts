import assert from 'node:assert/strict'
import { test } from 'node:test'
import protobuf from 'protobufjs'
import { workloadCodec, workloadProtoRoot } from '../../src/agent/workload-api/proto.js'
import { SpiffeEdgeError } from '../../src/errors.js'

test('ValidateJWTSVID claims cross google.protobuf.Struct and come back as the same JSON', () => {
  const claims = {
    sub: 'spiffe://example.org/w',
    aud: ['a', 'b'],
    exp: 1_900_000_000,
    iat: 1.5,
    nested: { ok: true, none: null, list: [1, 'x', { deep: [false] }] },
    empty: {},
  }
  const bytes = workloadCodec.validateJwtSvidResponse.encode({
    spiffeId: 'spiffe://example.org/w',
    claims,
  })
  const back = workloadCodec.validateJwtSvidResponse.decode(bytes)
  assert.equal(back.spiffeId, 'spiffe://example.org/w')
  assert.deepEqual(back.claims, claims)
})

test('the Struct on the wire is the proto3 one another implementation reads', () => {
  const bytes = workloadCodec.validateJwtSvidResponse.encode({
    spiffeId: 'spiffe://example.org/w',
    claims: { aud: ['x'], n: 2 },
  })
  // Read with protobufjs alone (no JSON mapping): the well-known Value oneofs are set as proto3 says.
  const t = workloadProtoRoot().lookupType('ValidateJWTSVIDResponse')
  const raw = t.toObject(t.decode(bytes), { oneofs: true }) as {
    claims: {
      fields: Record<
        string,
        { kind: string; listValue?: { values: { stringValue: string }[] }; numberValue?: number }
      >
    }
  }
  assert.equal(raw.claims.fields.aud?.kind, 'listValue')
  assert.equal(raw.claims.fields.aud?.listValue?.values[0]?.stringValue, 'x')
  assert.equal(raw.claims.fields.n?.numberValue, 2)
})

test('claims JSON cannot hold (a NaN from another implementation) are a coded error', () => {
  const t = workloadProtoRoot().lookupType('ValidateJWTSVIDResponse')
  const bytes = t
    .encode(
      t.fromObject({
        spiffeId: 'spiffe://example.org/w',
        claims: { fields: { n: { numberValue: Number.NaN } } },
      }),
    )
    .finish()
  assert.throws(
    () => workloadCodec.validateJwtSvidResponse.decode(bytes),
    (err: unknown) => err instanceof SpiffeEdgeError && err.code === 'ERR_WORKLOAD_PROTOCOL',
  )
})

test('a response that does not decode is a coded error', () => {
  const w = protobuf.Writer.create()
  w.uint32((2 << 3) | 2).bytes(new Uint8Array([0xff, 0xff, 0xff]))
  assert.throws(
    () => workloadCodec.validateJwtSvidResponse.decode(w.finish()),
    (err: unknown) => err instanceof SpiffeEdgeError && err.code === 'ERR_WORKLOAD_PROTOCOL',
  )
})
