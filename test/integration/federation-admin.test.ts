/**
 * Federation relationships created through the admin API (`server federation create|update|
 * delete`, SPIRE's flags and -data JSON) between two real `server run` processes: the created
 * relationship fetches the other server's bundle from its bundle endpoint without a restart, is
 * kept in the datastore across restarts, an update is picked up at once, a delete stops it; one
 * from the config file cannot be changed through the API (ERR_FEDERATION_STATIC).
 */
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminCall } from '../../src/server/admin-client.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { cli } from '../helpers/exec.js'
import {
  admin,
  eventually,
  relationshipArgs,
  restartDomainServer,
  startDomainServer,
  twoDomains,
} from '../helpers/federation.js'

interface Rel {
  trust_domain: string
  source: string
  bundle_endpoint_url: string
  endpoint_spiffe_id?: string
  lastSuccess?: string
  lastError?: string
}

test('federation create|update|delete: relationships from the admin API fetch, persist, change live', async (t) => {
  const { one, two } = await twoDomains(t, 'fedadm')
  await startDomainServer(
    two,
    [
      '[server.federation.bundle_endpoint]',
      'address = "127.0.0.1"',
      `port = ${two.endpointPort}`,
      'refresh_hint = "1s"',
    ].join('\n'),
    t,
  )
  // one.test has one relationship in its config file (three.test, never reachable): the API
  // must not change that one.
  const oneToml = [
    '[server.federation.federates_with."three.test"]',
    'bundle_endpoint_url = "https://127.0.0.1:1/"',
    'bundle_endpoint_profile = { type = "https_web" }',
  ].join('\n')
  await startDomainServer(one, oneToml, t)
  const sock = () => one.server!.adminSocket
  const fail = async (...args: string[]) => {
    const r = await cli(['server', ...args, '--admin-socket', sock()])
    assert.notEqual(r.code, 0, `${args.join(' ')} should fail: ${r.stdout}`)
    return r.stderr
  }
  const show = async (td: string) =>
    // Fetch status is not in SPIRE's -output json message: read it from the admin API.
    (await adminCall(sock(), 'GET', `/v1/federation/${td}`)) as unknown as Rel
  /** two.test's relationship, once `ok` holds for it. */
  const showWhen = (what: string, ok: (s: Rel) => boolean) =>
    eventually(what, async () => {
      const s = await show('two.test')
      return ok(s) ? s : undefined
    })
  const list = async () =>
    ((await adminCall(sock(), 'GET', '/v1/federation')) as unknown as { relationships: Rel[] })
      .relationships

  // The first bundle as PEM (sequence 0): what the fetch brings is then visibly the endpoint's.
  const pemFile = join(one.dir, 'two.pem')
  writeFileSync(pemFile, await admin(two, 'bundle', 'show', '--format', 'pem'))
  const url = `https://127.0.0.1:${two.endpointPort}/`
  const created = await admin(
    one,
    ...relationshipArgs(
      'create',
      'two.test',
      url,
      'https_spiffe',
      '-endpointSpiffeID',
      'spiffe://two.test/spire/server',
      '-trustDomainBundlePath',
      pemFile,
      '-trustDomainBundleFormat',
      'pem',
    ),
  )
  assert.match(created, /Trust domain\s+: two\.test/)
  assert.match(created, /Endpoint SPIFFE ID\s+: spiffe:\/\/two\.test\/spire\/server/)

  // No restart: the fetcher picks it up and stores two.test's bundle as its endpoint serves it.
  // Pretty output with -format spiffe is the bundle document itself.
  const theirsDoc = await admin(two, 'bundle', 'show', '--format', 'spiffe')
  const theirs = {
    bundle: theirsDoc,
    sequence: (JSON.parse(theirsDoc) as { spiffe_sequence: number }).spiffe_sequence,
  }
  assert.ok(theirs.sequence > 0)
  const fetched = await eventually('one.test fetched two.test from its endpoint', async () => {
    const doc = await admin(one, 'bundle', 'show', '-id', 'spiffe://two.test', '-format', 'spiffe')
    const r = {
      bundle: doc,
      sequence: (JSON.parse(doc) as { spiffe_sequence: number }).spiffe_sequence,
    }
    return r.sequence === theirs.sequence ? r : undefined
  })
  const td2 = TrustDomain.parse('two.test')
  assert.equal(
    TrustBundle.fromSpiffeJson(td2, fetched.bundle).toPem(),
    TrustBundle.fromSpiffeJson(td2, theirs.bundle).toPem(),
  )
  const s1 = await show('two.test')
  assert.equal(s1.source, 'api')
  assert.ok(s1.lastSuccess)

  // A second create of it is a conflict; the config file's one is refused for every verb.
  assert.match(
    await fail(...relationshipArgs('create', 'two.test', url, 'https_web')),
    /ERR_DATASTORE_CONFLICT/,
  )
  assert.match(
    await fail('federation', 'delete', '-id', 'spiffe://three.test'),
    /ERR_FEDERATION_STATIC/,
  )
  for (const verb of ['create', 'update'])
    assert.match(
      await fail(...relationshipArgs(verb, 'three.test', 'https://127.0.0.1:2/', 'https_web')),
      /ERR_FEDERATION_STATIC/,
    )
  // Bad input is refused before anything is stored, naming the problem.
  assert.match(
    await fail(...relationshipArgs('create', 'bad.test', 'http://127.0.0.1/', 'https_spiffe')),
    /must be an https URL[\s\S]*endpoint SPIFFE ID is required/,
  )

  // SPIRE's -data batch: each item succeeds or fails on its own.
  const data = join(one.dir, 'rels.json')
  writeFileSync(
    data,
    JSON.stringify({
      federationRelationships: [
        {
          trustDomain: 'four.test',
          bundleEndpointURL: 'https://127.0.0.1:4/',
          bundleEndpointProfile: 'https_web',
        },
        { trustDomain: 'one.test', bundleEndpointURL: url, bundleEndpointProfile: 'https_web' },
      ],
    }),
  )
  const batch = await cli([
    'server',
    'federation',
    'create',
    '-data',
    data,
    '--admin-socket',
    sock(),
  ])
  assert.equal(batch.code, 1)
  assert.match(batch.stdout, /Trust domain\s+: four\.test/)
  assert.match(batch.stderr, /one\.test \(code: ERR_USAGE\).*our own trust domain/)
  assert.match(
    await fail('federation', 'create', '-data', data, '-trustDomain', 'x.test'),
    /cannot use -trustDomain with -data/,
  )
  const sources = async () => (await list()).map((r) => [r.trust_domain, r.source])
  const stored = [
    ['four.test', 'api'],
    ['three.test', 'config'],
    ['two.test', 'api'],
  ]
  assert.deepEqual(await sources(), stored)

  // Restart: the created relationships come back from the datastore and fetch again.
  const restartedAt = await restartDomainServer(one, oneToml, t)
  assert.deepEqual(await sources(), stored)
  await showWhen('two.test fetched again after the restart', (s) =>
    Boolean(s.lastSuccess && s.lastSuccess > restartedAt),
  )

  // Update to a wrong endpoint SPIFFE ID: the next fetch (at once, no restart) checks it and
  // fails, keeping the last good bundle; back to the right one, it succeeds again.
  const update = (id: string) =>
    admin(
      one,
      ...relationshipArgs('update', 'two.test', url, 'https_spiffe', '-endpointSpiffeID', id),
    )
  await update('spiffe://two.test/not/the/server')
  const bad = await showWhen('the updated relationship is used', (s) => Boolean(s.lastError))
  assert.equal(bad.endpoint_spiffe_id, 'spiffe://two.test/not/the/server')
  assert.match(bad.lastError!, /expected spiffe:\/\/two\.test\/not\/the\/server/)
  assert.match(
    one.server!.stderr(),
    /federated bundle fetch failed; keeping the last good bundle[^\n]*two\.test/,
  )
  await update('spiffe://two.test/spire/server')
  await showWhen('the fixed relationship fetches', (s) => Boolean(s.lastSuccess && !s.lastError))

  // Delete while it fails (a failing fetch logs every refresh hint, 1 s): the log goes quiet,
  // list and show no longer have it; the bundle stays until `bundle delete`.
  const failures = () =>
    one.server!.stderr().match(/fetch failed; keeping the last good bundle[^\n]*two\.test/g)
      ?.length ?? 0
  await update('spiffe://two.test/not/the/server')
  const seen = failures()
  await eventually('failing again', async () => (failures() > seen + 1 ? true : undefined))
  assert.equal(
    (await admin(one, 'federation', 'delete', '-id', 'spiffe://two.test')).trim(),
    'federation relationship deleted.',
  )
  const atDelete = failures()
  assert.match(
    await fail('federation', 'show', '-trustDomain', 'two.test'),
    /ERR_DATASTORE_NOT_FOUND/,
  )
  assert.match(await fail('federation', 'delete', '-id', 'two.test'), /ERR_DATASTORE_NOT_FOUND/)
  assert.match(await admin(one, 'bundle', 'list'), /\* two\.test/)
  await new Promise((r) => setTimeout(r, 3500))
  assert.equal(failures(), atDelete, 'a deleted relationship is not fetched any more')

  // …and stays deleted across a restart.
  await restartDomainServer(one, oneToml, t)
  assert.deepEqual(
    (await list()).map((r) => r.trust_domain),
    ['four.test', 'three.test'],
  )
})
