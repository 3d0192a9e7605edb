import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { grpcTarget, parseEndpointAddress } from '../../src/agent/workload-api/addr.js'
import { workloadCodec } from '../../src/agent/workload-api/proto.js'

describe('SPIFFE_ENDPOINT_SOCKET parsing', () => {
  const ok: [string, unknown][] = [
    ['unix:///tmp/agent.sock', { kind: 'unix', path: '/tmp/agent.sock' }],
    ['unix:/tmp/agent.sock', { kind: 'unix', path: '/tmp/agent.sock' }],
    ['/tmp/agent.sock', { kind: 'unix', path: '/tmp/agent.sock' }],
    ['tcp://1.2.3.4:5', { kind: 'tcp', host: '1.2.3.4', port: 5 }],
    ['tcp://[::1]:8000', { kind: 'tcp', host: '::1', port: 8000 }],
  ]
  for (const [addr, want] of ok) {
    test(`accepts ${addr}`, () => assert.deepEqual(parseEndpointAddress(addr), want))
  }
  // go-spiffe's vectors (addr_test.go), plus the spec's "no authority" rule for unix.
  const bad: [string, RegExp][] = [
    ['\t', /control character/],
    ['blah', /"tcp" or "unix" scheme/],
    ['http://1.2.3.4:5', /"tcp" or "unix" scheme/],
    ['tcp:opaque', /opaque/],
    ['tcp://', /must include a host/],
    ['tcp://1.2.3.4:5?whatever', /query/],
    ['tcp://1.2.3.4:5#whatever', /fragment/],
    ['tcp://john:doe@1.2.3.4:5/path', /user info/],
    ['tcp://1.2.3.4:5/path', /path/],
    ['tcp://foo', /IP:port/],
    ['tcp://1.2.3.4', /include a port/],
    ['unix:opaque', /opaque/],
    ['unix://', /include a path/],
    ['unix://foo?whatever', /query/],
    ['unix://foo#whatever', /fragment/],
    ['unix://john:doe@foo/path', /user info/],
    ['unix://foo', /authority/],
  ]
  for (const [addr, re] of bad) {
    test(`rejects ${JSON.stringify(addr)}`, () =>
      assert.throws(
        () => parseEndpointAddress(addr),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'ERR_WORKLOAD_ENDPOINT')
          assert.match(err.message, re)
          return true
        },
      ))
  }
  test('grpc targets', () => {
    assert.equal(grpcTarget({ kind: 'unix', path: '/a/b' }), 'unix:///a/b')
    assert.equal(grpcTarget({ kind: 'tcp', host: '127.0.0.1', port: 9 }), 'ipv4:127.0.0.1:9')
    assert.equal(grpcTarget({ kind: 'tcp', host: '::1', port: 9 }), 'ipv6:[::1]:9')
  })
})

describe('Workload API codec', () => {
  test('ValidateJWTSVIDResponse claims round-trip through google.protobuf.Struct', () => {
    const claims = {
      sub: 'spiffe://example.org/x',
      aud: ['a', 'b'],
      exp: 1700000000,
      nested: { ok: true, none: null, list: [1, 'two', { three: 3 }] },
    }
    const b = workloadCodec.validateJwtSvidResponse.encode({ spiffeId: claims.sub, claims })
    assert.deepEqual(workloadCodec.validateJwtSvidResponse.decode(b), {
      spiffeId: claims.sub,
      claims,
    })
  })

  test('field numbers are the spec ones (X509SVID: spiffe_id=1 ... hint=5)', () => {
    const b = workloadCodec.x509SvidResponse.encode({
      svids: [
        {
          spiffeId: 'i',
          x509Svid: Uint8Array.of(1),
          x509SvidKey: Uint8Array.of(2),
          bundle: Uint8Array.of(3),
          hint: 'h',
        },
      ],
      crl: [],
      federatedBundles: { 'spiffe://t': Uint8Array.of(4) },
    })
    // svids (field 1, LEN) holding fields 1..5 in order; then federated_bundles (field 3).
    assert.equal(
      Buffer.from(b).toString('hex'),
      '0a0f0a0169120101' +
        '1a0102' +
        '220103' +
        '2a0168' +
        '1a0f' +
        '0a0a7370696666653a2f2f74' +
        '120104',
    )
  })

  test('malformed messages are ERR_WORKLOAD_PROTOCOL', () => {
    assert.throws(() => workloadCodec.jwtSvidRequest.decode(Uint8Array.of(0x0a, 0x05, 0x61)), {
      code: 'ERR_WORKLOAD_PROTOCOL',
    })
  })
})
