import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import type { Key } from '../../src/keymanager/types.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'
import { responseSigningString } from '../../src/transport/envelope.js'
import {
  openResponse,
  type SignedCall,
  signRequest,
  transportError,
} from '../../src/transport/node-call.js'
import { NodeCallError } from '../../src/transport/node-client.js'
import { codec } from '../../src/transport/proto.js'

// The transport-neutral half of a node API call: what any transport (gRPC, MQTT) relies on.

const td = TrustDomain.parse('example.org')
const km = new MemoryKeyManager()
const now = Date.now()
const caKey = await km.generateKey('ca', 'ec-p256')
const caCert = await issueX509Ca({
  subjectPublicKey: caKey.publicKey,
  trustDomain: td,
  selfSigner: caKey,
  notBefore: new Date(now - 60_000),
  notAfter: new Date(now + 3_600_000),
})
const bundle = new TrustBundle({ trustDomain: td, x509Authorities: [caCert], sequence: 1 })

async function svid(id: string, path: string): Promise<{ key: Key; chain: Uint8Array[] }> {
  const key = await km.generateKey(id, 'ec-p256')
  const cert = await issueX509Svid({
    subjectPublicKey: key.publicKey,
    spiffeId: SpiffeId.fromPath(td, path),
    issuer: { certificate: caCert, signer: caKey },
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 600_000),
  })
  return { key, chain: [cert] }
}
const server = await svid('server', '/spire/server')
const notServer = await svid('other', '/workload')

async function respond(
  call: SignedCall,
  by: { key: Key; chain: Uint8Array[] },
  o: { nonce?: Uint8Array; tamper?: boolean; error?: { code: number; reason: string } } = {},
): Promise<Uint8Array> {
  const body = codec.response('GetBundle').encode({ bundle: '{}', sequence: 7 })
  const nonce = o.nonce ?? call.nonce
  const timestampMs = Date.now()
  const error = {
    code: o.error?.code ?? 0,
    message: o.error ? 'no' : '',
    reason: o.error?.reason ?? '',
  }
  const signature = await by.key.sign(
    responseSigningString('GetBundle', timestampMs, nonce, body, error),
  )
  return codec.signedResponse.encode({
    body: o.tamper ? codec.response('GetBundle').encode({ bundle: '{}', sequence: 8 }) : body,
    serverChain: by.chain,
    timestampMs,
    requestNonce: nonce,
    signature,
    errorCode: error.code,
    errorMessage: error.message,
    errorReason: error.reason,
  })
}

const codeOf = (fn: () => unknown) => {
  try {
    fn()
  } catch (err) {
    assert.ok(err instanceof NodeCallError)
    return `${err.code}/${err.reason}`
  }
  assert.fail('expected a NodeCallError')
}

test('a response signed by the server SVID for our nonce opens to its body', async () => {
  const call = await signRequest('GetBundle', {}, undefined)
  const r = openResponse('GetBundle', call, await respond(call, server), bundle, td)
  assert.equal(r.sequence, 7)
})

test('anything else is refused, each by its cause', async () => {
  const call = await signRequest('GetBundle', {}, undefined)
  const ok = await respond(call, server)
  assert.equal(
    codeOf(() => openResponse('GetBundle', call, ok, undefined, td)),
    'ERR_SERVER_REFUSED/no_bundle',
  )
  const other = await respond(call, notServer)
  assert.equal(
    codeOf(() => openResponse('GetBundle', call, other, bundle, td)),
    'ERR_SERVER_UNTRUSTED/bad_server_svid',
  )
  const replay = await respond(call, server, { nonce: new Uint8Array(32) })
  assert.equal(
    codeOf(() => openResponse('GetBundle', call, replay, bundle, td)),
    'ERR_SERVER_REFUSED/nonce',
  )
  const tampered = await respond(call, server, { tamper: true })
  assert.equal(
    codeOf(() => openResponse('GetBundle', call, tampered, bundle, td)),
    'ERR_SERVER_REFUSED/signature',
  )
  const refusal = await respond(call, server, { error: { code: 7, reason: 'banned' } })
  assert.equal(
    codeOf(() => openResponse('GetBundle', call, refusal, bundle, td)),
    'ERR_SERVER_REFUSED/banned',
  )
})

test('a transport failure is named by its cause', () => {
  const code = (e: NodeCallError) => `${e.code}/${e.reason}`
  assert.equal(
    code(transportError(7, 'refused (stale_svid)', 'h:1', false)),
    'ERR_SERVER_REFUSED/stale_svid',
  )
  assert.equal(
    code(transportError(14, 'connect ECONNREFUSED', 'h:1', true)),
    'ERR_SERVER_UNREACHABLE/unreachable',
  )
  assert.equal(
    code(transportError(14, 'self-signed certificate in chain', 'h:1', true)),
    'ERR_SERVER_UNTRUSTED/untrusted_server',
  )
  assert.equal(code(transportError(13, 'internal', 'h:1', false)), 'ERR_SERVER_REFUSED/transport')
})
