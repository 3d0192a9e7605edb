/**
 * `-output json` prints SPIRE's API messages (spire-api-sdk protobuf JSON as spire-server's CLI
 * writes it: proto field names, every field present, int64 as strings, bytes as base64). Each
 * verb's output is parsed and its exact key set checked against the proto; `--json` is the same.
 * A real `server run` and a real agent.
 */
import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli } from '../helpers/exec.js'

const ENTRY_KEYS = [
  'id',
  'spiffe_id',
  'parent_id',
  'selectors',
  'x509_svid_ttl',
  'federates_with',
  'admin',
  'downstream',
  'expires_at',
  'dns_names',
  'revision_number',
  'store_svid',
  'jwt_svid_ttl',
  'hint',
  'created_at',
]
const AGENT_KEYS = [
  'id',
  'attestation_type',
  'x509svid_serial_number',
  'x509svid_expires_at',
  'selectors',
  'banned',
  'can_re_attest',
]
const BUNDLE_KEYS = [
  'trust_domain',
  'x509_authorities',
  'jwt_authorities',
  'refresh_hint',
  'sequence_number',
]

const keys = (o: unknown) => Object.keys(o as object)
const isInt64 = (v: unknown) => typeof v === 'string' && /^-?\d+$/.test(v)

test("-output json prints SPIRE's API messages for every server verb", async (t) => {
  const root = processDir('spiffe-edge-clijson-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const server = await startServerProcess(root, t)
  const run = async (...args: string[]) => {
    const r = await cli(['server', ...args, '-socketPath', server.adminSocket])
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`)
    assert.equal(r.stdout.trimEnd().split('\n').length, 1, 'one compact JSON line')
    return JSON.parse(r.stdout)
  }
  const json = (...args: string[]) => run(...args, '-output', 'json')

  // token generate: types.JoinToken.
  const token = await json('token', 'generate', '-spiffeID', 'spiffe://example.org/host')
  assert.deepEqual(keys(token), ['value', 'expires_at'])
  assert.ok(isInt64(token.expires_at) && Number(token.expires_at) > Date.now() / 1000)
  // --json is an alias: the same shape.
  assert.deepEqual(keys(await run('token', 'generate', '--json')), ['value', 'expires_at'])

  // entry create: BatchCreateEntryResponse {results: [{status, entry}]}.
  const created = await json(
    'entry',
    'create',
    '-parentID',
    'spiffe://example.org/host',
    '-spiffeID',
    'spiffe://example.org/app',
    '-selector',
    `unix:uid:${process.getuid!()}`,
    '-dns',
    'app.local',
    '-x509SVIDTTL',
    '10m',
  )
  assert.deepEqual(keys(created), ['results'])
  assert.deepEqual(keys(created.results[0]), ['status', 'entry'])
  assert.deepEqual(created.results[0].status, { code: 0, message: 'OK' })
  const entry = created.results[0].entry
  assert.deepEqual(keys(entry), ENTRY_KEYS)
  assert.deepEqual(entry.spiffe_id, { trust_domain: 'example.org', path: '/app' })
  assert.deepEqual(entry.parent_id, { trust_domain: 'example.org', path: '/host' })
  assert.deepEqual(entry.selectors, [{ type: 'unix', value: `uid:${process.getuid!()}` }])
  assert.equal(entry.x509_svid_ttl, 600) // int32: a number
  assert.equal(entry.jwt_svid_ttl, 0)
  assert.deepEqual(entry.dns_names, ['app.local'])
  for (const k of ['expires_at', 'revision_number', 'created_at']) assert.ok(isInt64(entry[k]), k)
  assert.ok(Number(entry.created_at) > 0)

  // entry show / list: ListEntriesResponse; count: CountEntriesResponse.
  const shown = await json('entry', 'show', '-entryID', entry.id)
  assert.deepEqual(keys(shown), ['entries', 'next_page_token'])
  assert.equal(shown.next_page_token, '')
  assert.deepEqual(shown.entries, [entry])
  assert.deepEqual(await json('entry', 'list'), shown)
  assert.deepEqual(await json('entry', 'count'), { count: 1 })

  // entry update: BatchUpdateEntryResponse, the revision bumped.
  const updated = await json(
    'entry',
    'update',
    '-entryID',
    entry.id,
    '-parentID',
    'spiffe://example.org/host',
    '-spiffeID',
    'spiffe://example.org/app',
    '-selector',
    `unix:uid:${process.getuid!()}`,
    '-hint',
    'web',
  )
  assert.deepEqual(keys(updated.results[0].entry), ENTRY_KEYS)
  assert.equal(updated.results[0].entry.hint, 'web')
  assert.ok(Number(updated.results[0].entry.revision_number) > Number(entry.revision_number))

  // bundle show: types.Bundle, DER authorities and PKIX JWT keys in base64.
  const bundle = await json('bundle', 'show')
  assert.deepEqual(keys(bundle), BUNDLE_KEYS)
  assert.equal(bundle.trust_domain, 'example.org')
  assert.deepEqual(keys(bundle.x509_authorities[0]), ['asn1', 'tainted', 'hint'])
  const ca = new X509Certificate(Buffer.from(bundle.x509_authorities[0].asn1, 'base64'))
  assert.ok(ca.ca)
  assert.deepEqual(keys(bundle.jwt_authorities[0]), [
    'public_key',
    'key_id',
    'expires_at',
    'tainted',
    'hint',
  ])
  const jwk = createPublicKey({
    key: Buffer.from(bundle.jwt_authorities[0].public_key, 'base64'),
    format: 'der',
    type: 'spki',
  })
  assert.ok(['ec', 'rsa'].includes(String(jwk.asymmetricKeyType)))
  assert.ok(isInt64(bundle.sequence_number) && Number(bundle.sequence_number) >= 1)
  assert.ok(isInt64(bundle.refresh_hint))
  // -format only changes pretty output.
  assert.deepEqual(await json('bundle', 'show', '-format', 'spiffe'), bundle)
  assert.deepEqual(await json('bundle', 'list'), { bundles: [], next_page_token: '' })
  assert.deepEqual(await json('bundle', 'count'), { count: 0 })
  assert.deepEqual(await json('federation', 'list'), {
    federation_relationships: [],
    next_page_token: '',
  })

  // x509 mint: spire-server's {x509_svid, private_key, root_cas} of base64 DER.
  const minted = await json('x509', 'mint', '-spiffeID', 'spiffe://example.org/tool')
  assert.deepEqual(keys(minted), ['x509_svid', 'private_key', 'root_cas'])
  const leaf = new X509Certificate(Buffer.from(minted.x509_svid[0], 'base64'))
  assert.match(String(leaf.subjectAltName), /URI:spiffe:\/\/example\.org\/tool/)
  const key = createPrivateKey({
    key: Buffer.from(minted.private_key, 'base64'),
    format: 'der',
    type: 'pkcs8',
  })
  assert.ok(leaf.checkPrivateKey(key), 'private_key is the certified key (PKCS#8 DER)')
  assert.equal(minted.root_cas[0], bundle.x509_authorities[0].asn1)

  // jwt mint: MintJWTSVIDResponse {svid: types.JWTSVID}.
  const jwt = await json('jwt', 'mint', '-spiffeID', 'spiffe://example.org/tool', '-audience', 'db')
  assert.deepEqual(keys(jwt), ['svid'])
  assert.deepEqual(keys(jwt.svid), ['token', 'id', 'expires_at', 'issued_at', 'hint'])
  assert.deepEqual(jwt.svid.id, { trust_domain: 'example.org', path: '/tool' })
  assert.ok(Number(jwt.svid.expires_at) > Number(jwt.svid.issued_at))
  assert.equal(jwt.svid.token.split('.').length, 3)

  // A real agent: agent list/show/count/ban/evict.
  const d = join(root, 'agent')
  mkdirSync(d)
  const bundlePem = join(root, 'bundle.pem')
  writeFileSync(
    bundlePem,
    (await cli(['server', 'bundle', 'show', '-socketPath', server.adminSocket])).stdout,
  )
  const agent = await startCli(
    agentArgs(
      writeAgentConfig(d, server.address),
      '-trustBundle',
      bundlePem,
      '-joinToken',
      token.value,
    ),
    t,
  )
  const agentId = String(agent.first.agent_id)
  const listed = await json('agent', 'list')
  assert.deepEqual(keys(listed), ['agents', 'next_page_token'])
  assert.deepEqual(keys(listed.agents[0]), AGENT_KEYS)
  const a = listed.agents[0]
  assert.equal(`spiffe://${a.id.trust_domain}${a.id.path}`, agentId)
  assert.equal(a.attestation_type, 'join_token')
  assert.ok(isInt64(a.x509svid_expires_at))
  assert.equal(a.banned, false)
  assert.deepEqual(await json('agent', 'show', '-spiffeID', agentId), a)
  assert.deepEqual(await json('agent', 'count'), { count: 1 })
  assert.deepEqual(await json('agent', 'ban', '-spiffeID', agentId), {}) // google.protobuf.Empty
  assert.equal((await json('agent', 'show', '-spiffeID', agentId)).banned, true)
  assert.deepEqual(await json('agent', 'evict', '-spiffeID', agentId), {})
  agent.child.kill('SIGTERM')
  await agent.exited

  // entry delete: BatchDeleteEntryResponse.
  assert.deepEqual(await json('entry', 'delete', '-entryID', entry.id), {
    results: [{ status: { code: 0, message: 'OK' }, id: entry.id }],
  })

  // An error with -output json is JSON on stderr too, with its code.
  const missing = await cli([
    'server',
    'entry',
    'show',
    '-entryID',
    entry.id,
    '-output',
    'json',
    '-socketPath',
    server.adminSocket,
  ])
  assert.equal(missing.code, 1)
  assert.equal(JSON.parse(missing.stderr).error.code, 'ERR_DATASTORE_NOT_FOUND')
  // And pretty stays the default.
  const pretty = await cli(['server', 'entry', 'count', '-socketPath', server.adminSocket])
  // (the join token's -spiffeID alias left one node entry)
  assert.match(pretty.stdout, /^\d+ registration entr(y|ies)\n$/)
})
