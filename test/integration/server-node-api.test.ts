import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { createLocalJWKSet, jwtVerify } from 'jose'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { type AgentAuth, GrpcNodeClient, NodeCallError } from '../../src/transport/grpc-client.js'
import { run } from '../helpers/exec.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')
const pem = (der: Uint8Array) => new x509.X509Certificate(der).toString('pem')

async function attest(address: string, token: string, bundle: 'insecure' = 'insecure') {
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address, trustDomain: td, bundle })
  const r = await client.attestAgent(joinTokenAgentAttestor(token), key)
  const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
  return { client, r, auth, key, keys }
}

test('join token attestation gives an agent SVID that openssl verifies against the bundle', async () => {
  await using s = await startTestServer()
  const token = await s.token()
  const { client, r } = await attest(s.address, token)
  try {
    assert.equal(r.svid.spiffeId, `spiffe://example.org/spire/agent/join_token/${token}`)
    assert.equal(r.reattestable, false)
    assert.ok(r.selectors.some((x) => x.type === 'spiffe_id' && x.value === r.svid.spiffeId))
    writeFileSync(join(s.dir, 'bundle.pem'), r.bundle.toPem())
    writeFileSync(join(s.dir, 'svid.pem'), r.svid.certChain.map(pem).join('\n'))
    const v = await run('openssl', [
      'verify',
      '-CAfile',
      join(s.dir, 'bundle.pem'),
      join(s.dir, 'svid.pem'),
    ])
    assert.equal(v.code, 0, v.stdout + v.stderr)
    const ext = await run('openssl', [
      'x509',
      '-in',
      join(s.dir, 'svid.pem'),
      '-noout',
      '-ext',
      'subjectAltName,keyUsage',
    ])
    assert.equal((ext.stdout.match(/URI:/g) ?? []).length, 1, ext.stdout)
    assert.match(ext.stdout, /Key Usage: critical/)
    // The token is single use.
    await assert.rejects(
      attest(s.address, token),
      (e: unknown) => e instanceof NodeCallError && e.status === 7,
    )
  } finally {
    client.close()
  }
})

test('an unknown attestor type and a malformed token are refused with clear statuses', async () => {
  await using s = await startTestServer()
  await assert.rejects(
    attest(s.address, 'not a token!'),
    (e: unknown) =>
      e instanceof NodeCallError && e.status === 7 && e.reason === 'attestation_failed',
  )
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('a', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  try {
    await assert.rejects(
      client.attestAgent(
        {
          kind: 'NodeAttestor',
          name: 'aws_iid',
          payload: async () => new Uint8Array([1]),
          respond: async () => new Uint8Array(),
        },
        key,
      ),
      (e: unknown) =>
        e instanceof NodeCallError && e.status === 3 && e.reason === 'unknown_attestor',
    )
  } finally {
    client.close()
  }
})

test('entries sync, SVIDs are issued only for authorized entries, JWT-SVIDs verify with the JWKS bundle', async () => {
  await using s = await startTestServer()
  const token = await s.token('spiffe://example.org/gateway/7')
  const { client, auth, keys } = await attest(s.address, token)
  try {
    const web = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/web',
      parent_id: 'spiffe://example.org/gateway/7',
      selectors: [{ type: 'unix', value: 'uid:1000' }],
      dns_names: ['web.local'],
      hint: 'web',
    })
    const other = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/elsewhere',
      parent_id: 'spiffe://example.org/gateway/8',
      selectors: [{ type: 'unix', value: 'uid:1' }],
    })
    const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    assert.equal(full.full, true)
    const ids = full.entries.map((e) => e.spiffeId).sort()
    assert.deepEqual(ids, ['spiffe://example.org/gateway/7', 'spiffe://example.org/web'])
    // Incremental: nothing new, then one update.
    const none = await client.call('SyncEntries', { sinceRevision: full.revision }, auth)
    assert.equal(none.full, false)
    assert.equal(none.entries.length, 0)
    await s.admin('PUT', `/v1/entries/${String(web.id)}`, {
      spiffe_id: 'spiffe://example.org/web',
      parent_id: 'spiffe://example.org/gateway/7',
      selectors: [{ type: 'unix', value: 'uid:1001' }],
    })
    const known = full.entries.map((e) => ({ id: e.id, revisionNumber: e.revisionNumber }))
    const inc = await client.call('SyncEntries', { sinceRevision: full.revision, known }, auth)
    assert.deepEqual(
      inc.entries.map((e) => e.selectors[0]?.value),
      ['uid:1001'],
    )

    const wkey = await keys.generateKey('w', 'ec-p256')
    const csr = await createCsr(wkey)
    const batch = await client.call(
      'BatchNewX509SVID',
      {
        params: [
          { entryId: String(web.id), csr },
          { entryId: String(other.id), csr },
          { entryId: 'nope', csr },
        ],
      },
      auth,
    )
    assert.deepEqual(
      batch.results.map((x) => x.status),
      [0, 5, 5],
    )
    const svid = batch.results[0]!.svid!
    assert.equal(svid.spiffeId, 'spiffe://example.org/web')
    writeFileSync(join(s.dir, 'b.pem'), client.currentBundle()!.toPem())
    writeFileSync(join(s.dir, 'w.pem'), svid.certChain.map(pem).join('\n'))
    assert.equal(
      (await run('openssl', ['verify', '-CAfile', join(s.dir, 'b.pem'), join(s.dir, 'w.pem')]))
        .code,
      0,
    )

    const jwt = await client.call('NewJWTSVID', { entryId: String(web.id), audience: ['db'] }, auth)
    const bundle = await client.call('GetBundle', {})
    const jwks = JSON.parse(bundle.bundle) as { keys: { use: string }[] }
    const verified = await jwtVerify(
      jwt.token,
      createLocalJWKSet({
        // A SPIFFE bundle marks JWT keys use=jwt-svid; a plain JWKS consumer (jose) wants use=sig or none.
        keys: jwks.keys.filter((k) => k.use === 'jwt-svid').map(({ use: _use, ...k }) => k),
      } as never),
      { audience: 'db' },
    )
    assert.equal(verified.payload.sub, 'spiffe://example.org/web')
    // Without server.jwt_issuer a JWT-SVID carries no iss, as before it existed.
    assert.equal(verified.payload.iss, undefined)
    await assert.rejects(
      client.call('NewJWTSVID', { entryId: String(other.id), audience: ['db'] }, auth),
      (e: unknown) => e instanceof NodeCallError && e.status === 5,
    )
    await assert.rejects(
      client.call('NewJWTSVID', { entryId: String(web.id), audience: [] }, auth),
      (e: unknown) => e instanceof NodeCallError && e.status === 3,
    )
  } finally {
    client.close()
  }
})

test('requests signed with a foreign key, replayed, or from a banned agent are refused', async () => {
  await using s = await startTestServer()
  const { client, auth, keys } = await attest(s.address, await s.token())
  try {
    const foreign = await keys.generateKey('foreign', 'ec-p256')
    await assert.rejects(
      client.call('SyncEntries', { sinceRevision: 0 }, { ...auth, signer: foreign }),
      (e: unknown) => e instanceof NodeCallError && e.status === 16 && e.reason === 'signature',
    )
    // A byte-identical replay of a signed request.
    const { codec } = await import('../../src/transport/proto.js')
    const { requestSigningString } = await import('../../src/transport/envelope.js')
    const body = codec.request('SyncEntries').encode({ sinceRevision: 0 })
    const nonce = new Uint8Array(16).fill(7)
    const ts = Date.now()
    const sig = await auth.signer.sign(
      requestSigningString('SyncEntries', auth.spiffeId, ts, nonce, body),
    )
    const req = codec.signedRequest.encode({
      method: 'SyncEntries',
      body,
      agentChain: [...auth.chain],
      timestampMs: ts,
      nonce,
      signature: sig,
    })
    assert.equal((await s.server.api.call(req)).errorCode, 0)
    const again = await s.server.api.call(req)
    assert.equal(again.errorCode, 16)
    assert.equal(again.errorReason, 'replay')
    // Malformed protobuf gets INVALID_ARGUMENT and the server keeps serving.
    const bad = await s.server.api.call(new Uint8Array([0xff, 0xff, 0xff]))
    assert.equal(bad.errorCode, 3)
    // Banned.
    await s.admin('POST', `/v1/agents/${encodeURIComponent(auth.spiffeId)}/ban`)
    await assert.rejects(
      client.call('SyncEntries', { sinceRevision: 0 }, auth),
      (e: unknown) => e instanceof NodeCallError && e.status === 7 && e.reason === 'banned',
    )
  } finally {
    client.close()
  }
})

test('RenewAgent issues a new SVID; the old one works until the new one is used', async () => {
  await using s = await startTestServer()
  const { client, auth, keys } = await attest(s.address, await s.token())
  try {
    const next = await keys.generateKey('next', 'ec-p256')
    const renewed = await client.call('RenewAgent', { csr: await createCsr(next) }, auth)
    assert.equal(renewed.svid?.spiffeId, auth.spiffeId)
    const auth2: AgentAuth = {
      spiffeId: auth.spiffeId,
      chain: renewed.svid!.certChain,
      signer: next,
    }
    await client.call('SyncEntries', { sinceRevision: 0 }, auth) // old still accepted
    await client.call('SyncEntries', { sinceRevision: 0 }, auth2) // first use of the new one
    await assert.rejects(
      client.call('SyncEntries', { sinceRevision: 0 }, auth),
      (e: unknown) => e instanceof NodeCallError && e.reason === 'stale_svid',
    )
  } finally {
    client.close()
  }
})

test('attestations are rate limited per source address', async () => {
  await using s = await startTestServer({ extraToml: 'attest_rate_per_second = 1' })
  const first = attest(s.address, await s.token())
  const second = attest(s.address, await s.token())
  const results = await Promise.allSettled([first, second])
  const limited = results.filter(
    (r) =>
      r.status === 'rejected' &&
      r.reason instanceof NodeCallError &&
      r.reason.reason === 'rate_limited',
  )
  assert.equal(limited.length, 1)
  for (const r of results) if (r.status === 'fulfilled') r.value.client.close()
})

test('an agent trusting another bundle refuses the server', async () => {
  await using a = await startTestServer()
  await using b = await startTestServer()
  const { r, client } = await attest(a.address, await a.token())
  client.close()
  const wrong = new GrpcNodeClient({ address: b.address, trustDomain: td, bundle: r.bundle })
  try {
    await assert.rejects(
      wrong.call('GetBundle', {}),
      (e: unknown) => e instanceof NodeCallError && e.status === 14,
    )
  } finally {
    wrong.close()
  }
})

test('entries past their expiry are pruned by the server, and agents are told they are gone', async () => {
  await using s = await startTestServer({ tickMs: 100 })
  const { client, auth } = await attest(s.address, await s.token())
  try {
    const expires = Math.floor(Date.now() / 1000) + 1
    const e = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/brief',
      parent_id: auth.spiffeId,
      selectors: [{ type: 'unix', value: 'uid:9' }],
      expires_at: expires,
    })
    const full = await client.call('SyncEntries', { sinceRevision: 0 }, auth)
    assert.deepEqual(
      full.entries.map((x) => x.id),
      [String(e.id)],
    )
    const deadline = Date.now() + 10_000
    while (((await s.admin('GET', '/v1/entries')).entries as unknown[]).length > 0) {
      assert.ok(Date.now() < deadline, 'the expired entry was not pruned')
      await new Promise((r) => setTimeout(r, 100))
    }
    const known = full.entries.map((x) => ({ id: x.id, revisionNumber: x.revisionNumber }))
    const inc = await client.call('SyncEntries', { sinceRevision: full.revision, known }, auth)
    assert.deepEqual(inc.deletedIds, [String(e.id)])
  } finally {
    client.close()
  }
})
