import assert from 'node:assert/strict'
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, run } from '../helpers/exec.js'

/**
 * The verbs ops scripts use with spire-server, spelled as SPIRE spells them (one dash,
 * camelCase), against a real server process and real agents.
 */
test("SPIRE's admin verbs: entry create -data, entry count/show filters, agent list filters, count, purge", async (t) => {
  const root = processDir('spiffe-edge-spire-verbs-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  // agent_ttl 3s: an agent that stops expires soon, so purge has something to evict.
  const server = await startServerProcess(root, t, 'attest_rate_per_second = 100\nagent_ttl = "3s"')
  const a = async (...args: string[]) => {
    const r = await cli(['server', ...args, '-socketPath', server.adminSocket])
    return r
  }
  const ok = async (...args: string[]) => {
    const r = await a(...args)
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`)
    return r.stdout
  }
  const json = async (...args: string[]) => JSON.parse(await ok(...args, '-output', 'json'))
  /** A types.SPIFFEID message back to its URI. */
  const sid = (m: { trust_domain: string; path: string }) => `spiffe://${m.trust_domain}${m.path}`

  await t.test('entry create -data: a batch in spire-server JSON, reported per entry', async () => {
    const data = join(root, 'entries.json')
    writeFileSync(
      data,
      JSON.stringify({
        entries: [
          {
            spiffe_id: 'spiffe://example.org/web',
            parent_id: 'spiffe://example.org/gw1',
            selectors: [
              { type: 'unix', value: 'uid:1000' },
              { type: 'unix', value: 'gid:1000' },
            ],
            x509_svid_ttl: 600,
          },
          // As spire-server writes them (protobuf JSON: IDs as messages, int64 as strings).
          {
            spiffe_id: { trust_domain: 'example.org', path: '/db' },
            parent_id: { trust_domain: 'example.org', path: '/gw1' },
            selectors: [{ type: 'unix', value: 'uid:1000' }],
            federates_with: ['partner.org'],
            expires_at: '0',
            store_svid: false,
          },
          {
            spiffe_id: 'spiffe://example.org/edge',
            parent_id: 'spiffe://example.org/gw2',
            selectors: [{ type: 'unix', value: 'uid:2000' }],
            downstream: true,
          },
          // Refused (another trust domain): the others still land, and the exit code says one failed.
          {
            spiffe_id: 'spiffe://elsewhere.org/x',
            parent_id: 'spiffe://example.org/gw1',
            selectors: [{ type: 'unix', value: 'uid:1' }],
          },
        ],
      }),
    )
    const r = await a('entry', 'create', '-data', data, '-output', 'json')
    assert.equal(r.code, 1, r.stderr)
    // BatchCreateEntryResponse: a types.Status per entry (gRPC codes, 0 is OK).
    const results = (JSON.parse(r.stdout) as { results: { status: { code: number } }[] }).results
    assert.deepEqual(
      results.map((x) => (x.status.code === 0 ? 'OK' : 'ERROR')),
      ['OK', 'OK', 'OK', 'ERROR'],
    )
    assert.equal((await json('entry', 'count')).count, 3)
  })

  await t.test(
    'entry show and count filter by selector, federatesWith, downstream, parentID',
    async () => {
      const ids = async (...f: string[]) =>
        (
          (await json('entry', 'show', ...f)).entries as {
            spiffe_id: { trust_domain: string; path: string }
          }[]
        )
          .map((e) => sid(e.spiffe_id))
          .sort()
      assert.deepEqual(await ids('-selector', 'unix:uid:1000'), [
        'spiffe://example.org/db',
        'spiffe://example.org/web',
      ])
      assert.deepEqual(await ids('-selector', 'unix:uid:1000', '-selector', 'unix:gid:1000'), [
        'spiffe://example.org/web',
      ])
      assert.deepEqual(await ids('-federatesWith', 'partner.org'), ['spiffe://example.org/db'])
      assert.deepEqual(await ids('-downstream'), ['spiffe://example.org/edge'])
      assert.deepEqual(await ids('-parentID', 'spiffe://example.org/gw2'), [
        'spiffe://example.org/edge',
      ])
      assert.match(
        await ok('entry', 'count', '-selector', 'unix:uid:2000'),
        /^1 registration entry$/m,
      )
    },
  )

  // Two real agents: one stays up, one is stopped and left to expire.
  const bundle = join(root, 'bundle.pem')
  writeFileSync(bundle, await ok('bundle', 'show'))
  const startAgent = async (name: string) => {
    const d = join(root, name)
    mkdirSync(d)
    const token = (await json('token', 'generate')).value as string
    return startCli(
      agentArgs(writeAgentConfig(d, server.address), '-trustBundle', bundle, '-joinToken', token),
      t,
    )
  }
  const live = await startAgent('live')
  const gone = await startAgent('gone')
  const goneId = String(gone.first.agent_id)
  const liveId = String(live.first.agent_id)
  gone.child.kill('SIGTERM')
  assert.equal(await gone.exited, 0)

  await t.test('agent list and count filter as spire-server does', async () => {
    assert.equal((await json('agent', 'count')).count, 2)
    assert.equal((await json('agent', 'count', '-attestationType', 'join_token')).count, 2)
    assert.equal((await json('agent', 'count', '-attestationType', 'tpm')).count, 0)
    await ok('agent', 'ban', '-spiffeID', goneId)
    const banned = (await json('agent', 'list', '-banned', 'true')).agents as {
      id: { trust_domain: string; path: string }
    }[]
    assert.deepEqual(
      banned.map((x) => sid(x.id)),
      [goneId],
    )
    assert.equal((await json('agent', 'count', '-banned', 'false')).count, 1)
    const soon = new Date(Date.now() + 3_600_000).toISOString()
    assert.equal((await json('agent', 'count', '-expiresBefore', soon)).count, 2)
    assert.equal((await json('agent', 'count', '-expiresBefore', '1')).count, 0)
    const bad = await a('agent', 'list', '-banned', 'maybe')
    assert.equal(bad.code, 2)
  })

  await t.test(
    'agent purge evicts only agents expired for -expiredFor; -dryRun changes nothing',
    async () => {
      // The stopped agent's 3 s SVID runs out; the live one keeps renewing.
      const deadline = Date.now() + 30_000
      for (;;) {
        const expired = (
          (await json('agent', 'purge', '-expiredFor', '1s', '-dryRun')).expired_agents as {
            agent_id: string
            deleted: boolean
          }[]
        ).map((x) => x.agent_id)
        if (expired.includes(goneId)) {
          assert.deepEqual(expired, [goneId])
          break
        }
        assert.ok(Date.now() < deadline, 'the stopped agent never expired')
        await new Promise((r) => setTimeout(r, 500))
      }
      assert.equal((await json('agent', 'count')).count, 2, 'dry run evicted nothing')
      const purged = await json('agent', 'purge', '-expiredFor', '1s')
      assert.deepEqual(purged.expired_agents, [{ agent_id: goneId, deleted: true }])
      const left = (await json('agent', 'list')).agents as {
        id: { trust_domain: string; path: string }
      }[]
      assert.deepEqual(
        left.map((x) => sid(x.id)),
        [liveId],
      )
    },
  )

  await t.test(
    'x509 mint and jwt mint, as spire-server: the key is made by the CLI, OpenSSL verifies the SVID',
    async () => {
      const out = join(root, 'minted')
      await ok(
        'x509',
        'mint',
        '-spiffeID',
        'spiffe://example.org/tool',
        '-ttl',
        '10m',
        '-dns',
        'tool.local',
        '-write',
        out,
      )
      assert.equal(statSync(join(out, 'key.pem')).mode & 0o777, 0o600)
      const v = await run('openssl', [
        'verify',
        '-CAfile',
        join(out, 'bundle.pem'),
        join(out, 'svid.pem'),
      ])
      assert.equal(v.code, 0, v.stdout + v.stderr)
      const text = await run('openssl', [
        'x509',
        '-in',
        join(out, 'svid.pem'),
        '-noout',
        '-ext',
        'subjectAltName',
      ])
      assert.match(text.stdout, /URI:spiffe:\/\/example\.org\/tool/)
      assert.match(text.stdout, /DNS:tool\.local/)
      // The key in key.pem is the one certified.
      const pub = (f: string, args: string[]) =>
        run('openssl', [...args, '-in', join(out, f), '-pubout'])
      assert.equal(
        (await pub('key.pem', ['pkey'])).stdout,
        (await run('openssl', ['x509', '-in', join(out, 'svid.pem'), '-noout', '-pubkey'])).stdout,
      )
      const jwt = (
        await json(
          'jwt',
          'mint',
          '-spiffeID',
          'spiffe://example.org/tool',
          '-audience',
          'db',
          '-ttl',
          '5m',
        )
      ).svid.token as string
      const claims = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as {
        sub: string
        aud: string[] | string
        exp: number
      }
      assert.equal(claims.sub, 'spiffe://example.org/tool')
      assert.deepEqual([claims.aud].flat(), ['db'])
      assert.ok(claims.exp - Date.now() / 1000 <= 300 + 5)
      // Not for the server's own ID, nor outside the trust domain.
      for (const id of ['spiffe://example.org/spire/server', 'spiffe://elsewhere.org/x']) {
        const r = await a('jwt', 'mint', '-spiffeID', id, '-audience', 'db')
        assert.notEqual(r.code, 0, id)
      }
    },
  )

  await t.test('healthcheck -shallow and -verbose', async () => {
    assert.match(await ok('healthcheck', '-shallow', '-verbose'), /shallow[\s\S]*Server is healthy/)
    assert.equal((await json('healthcheck', '-shallow')).shallow, true)
  })
  live.child.kill('SIGTERM')
  assert.equal(await live.exited, 0)
})
