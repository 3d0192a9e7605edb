import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  agentArgs,
  fetchValidSvids,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, run } from '../helpers/exec.js'

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as { port: number }).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

/** The `error[CODE]` line and remedy the CLI printed. */
function printedError(stderr: string): { code: string; text: string } {
  const m = /error\[([A-Z_]+)\]: .*(\n\s+remedy: .*)?/.exec(stderr)
  assert.ok(m, stderr)
  return { code: m[1]!, text: m[0] }
}

test('agent errors name their real cause, with real server and agent processes', async (t) => {
  const root = processDir('spiffe-edge-agent-errors-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  // Several agents attest from 127.0.0.1 within a second; the default (1/s per address, as
  // SPIRE's) is not what this test is about.
  const server = await startServerProcess(root, t, 'attest_rate_per_second = 100')
  const bundle = join(root, 'bundle.pem')
  writeFileSync(bundle, await server.admin('bundle', 'show'))
  const token = async () =>
    JSON.parse(await server.admin('token', 'generate', '--json')).value as string
  /** An agent dir of its own; `toml` goes into [agent]. */
  const agentDir = (name: string, address = server.address, toml = '') => {
    const d = join(root, name)
    mkdirSync(d)
    return writeAgentConfig(d, address, toml)
  }

  await t.test('a down server: ERR_SERVER_UNREACHABLE, not a refusal', async () => {
    const config = agentDir('down', `127.0.0.1:${await closedPort()}`)
    const r = await cli(agentArgs(config, '--trust-bundle', bundle, '--join-token', 'ab12'))
    assert.equal(r.code, 1)
    const e = printedError(r.stderr)
    assert.equal(e.code, 'ERR_SERVER_UNREACHABLE', r.stderr)
    assert.match(e.text, /start the server|server_address/)
  })

  await t.test('a bundle that does not trust the server: ERR_SERVER_UNTRUSTED', async () => {
    const other = join(root, 'other-ca.pem')
    const gen = await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=not our server',
      '-days',
      '1',
      '-keyout',
      join(root, 'other-ca.key'),
      '-out',
      other,
    ])
    assert.equal(gen.code, 0, gen.stderr)
    const tok = await token()
    const config = agentDir('stale')
    const r = await cli(agentArgs(config, '--trust-bundle', other, '--join-token', tok))
    assert.equal(r.code, 1)
    const e = printedError(r.stderr)
    assert.equal(e.code, 'ERR_SERVER_UNTRUSTED', r.stderr)
    assert.match(e.text, /trust_bundle_path|bundle show/)
    // The token was never presented: it still attests an agent.
    const ok = await startCli(
      agentArgs(agentDir('stale-then-ok'), '--trust-bundle', bundle, '--join-token', tok),
      t,
    )
    ok.child.kill('SIGTERM')
    assert.equal(await ok.exited, 0)
  })

  await t.test('no join token: ERR_JOIN_TOKEN_MISSING, not "malformed"', async () => {
    const r = await cli(agentArgs(agentDir('notoken'), '--trust-bundle', bundle))
    assert.equal(r.code, 1)
    const e = printedError(r.stderr)
    assert.equal(e.code, 'ERR_JOIN_TOKEN_MISSING', r.stderr)
    assert.doesNotMatch(r.stderr, /malformed/)
    assert.match(e.text, /token generate/)
  })

  const uid = process.getuid!()
  let first: Awaited<ReturnType<typeof startCli>> | undefined
  let firstSocket = ''
  await t.test('a second agent on a taken socket fails before spending its token', async () => {
    first = await startCli(
      agentArgs(
        agentDir('first', server.address, 'sync_interval = "1s"'),
        '--trust-bundle',
        bundle,
        '--join-token',
        await token(),
      ),
      t,
    )
    firstSocket = String(first.first.socket_path)
    const tok = await token()
    const second = await cli(
      agentArgs(
        agentDir('second'),
        '--trust-bundle',
        bundle,
        '--join-token',
        tok,
        '--socket-path',
        firstSocket,
      ),
    )
    assert.equal(second.code, 1)
    assert.equal(printedError(second.stderr).code, 'ERR_WORKLOAD_SOCKET_IN_USE', second.stderr)
    // The first agent still serves, and the token is unspent.
    assert.equal(first.child.exitCode, null)
    const third = await startCli(
      agentArgs(agentDir('third'), '--trust-bundle', bundle, '--join-token', tok),
      t,
    )
    third.child.kill('SIGTERM')
    assert.equal(await third.exited, 0)
  })

  await t.test('banned and evicted agents stop serving and say why', async () => {
    const a = await startCli(
      agentArgs(
        agentDir('banned', server.address, 'sync_interval = "1s"'),
        '--trust-bundle',
        bundle,
        '--join-token',
        await token(),
      ),
      t,
    )
    const b = await startCli(
      agentArgs(
        agentDir('evicted', server.address, 'sync_interval = "1s"'),
        '--trust-bundle',
        bundle,
        '--join-token',
        await token(),
      ),
      t,
    )
    // Both serve a workload first.
    for (const [agent, name] of [
      [a, 'banned'],
      [b, 'evicted'],
    ] as const) {
      await server.admin(
        'entry',
        'create',
        '--parentID',
        String(agent.first.agent_id),
        '--spiffeID',
        `spiffe://example.org/${name}`,
        '--selector',
        `unix:uid:${uid}`,
      )
    }
    for (const agent of [a, b]) {
      let ids: string[] = []
      for (let i = 0; i < 50 && ids.length === 0; i++) {
        ids = await fetchValidSvids(String(agent.first.socket_path)).catch(() => [])
        if (ids.length === 0) await new Promise((r) => setTimeout(r, 200))
      }
      assert.equal(ids.length, 1)
    }
    await server.admin('agent', 'ban', '--spiffeID', String(a.first.agent_id))
    await server.admin('agent', 'evict', '--spiffeID', String(b.first.agent_id))
    // They stop on their own within a few syncs (an agent that keeps serving fails here).
    const exit = (p: typeof a) =>
      Promise.race([p.exited, new Promise((r) => setTimeout(() => r('still running'), 15_000))])
    assert.equal(await exit(a), 1, a.stderr())
    assert.equal(await exit(b), 1, b.stderr())
    assert.equal(printedError(a.stderr()).code, 'ERR_AGENT_BANNED')
    assert.match(a.stderr(), /"level":"error".*banned this agent/)
    assert.match(printedError(a.stderr()).text, /agent evict/)
    assert.equal(printedError(b.stderr()).code, 'ERR_AGENT_EVICTED')
    assert.match(b.stderr(), /"level":"error".*no longer accepts this agent/)
    // Nothing is served any more.
    await assert.rejects(fetchValidSvids(String(a.first.socket_path)))
    await assert.rejects(fetchValidSvids(String(b.first.socket_path)))
    // Nor kept for a restart: the sealed SVID cache of a refused agent is emptied.
    for (const name of ['banned', 'evicted']) {
      const cache = JSON.parse(readFileSync(join(root, name, 'agent', 'svid-cache.json'), 'utf8'))
      assert.deepEqual(cache.records, [], name)
    }
  })

  await t.test(
    'a down server seen through the Workload API is not "is the agent running?"',
    async () => {
      assert.ok(first)
      await server.admin(
        'entry',
        'create',
        '--parentID',
        String(first.first.agent_id),
        '--spiffeID',
        'spiffe://example.org/jwt',
        '--selector',
        `unix:uid:${uid}`,
      )
      // The agent picks the entry up, then loses its server.
      for (let i = 0; i < 50; i++) {
        if ((await fetchValidSvids(firstSocket).catch(() => [])).length > 0) break
        await new Promise((r) => setTimeout(r, 200))
      }
      server.child.kill('SIGKILL')
      await server.exited // a crash: the server is simply gone
      const r = await cli([
        'api',
        'fetch',
        'jwt',
        '--socket-path',
        firstSocket,
        '--audience',
        'db',
        '--json',
      ])
      assert.equal(r.code, 1)
      const err = (JSON.parse(r.stderr) as { error: { code: string; remedy: string } }).error
      assert.equal(err.code, 'ERR_AGENT_SERVER_UNREACHABLE', r.stderr)
      assert.doesNotMatch(err.remedy, /is the agent running/)
      // An agent that is not there still reads as such.
      const gone = await cli([
        'api',
        'fetch',
        'jwt',
        '--socket-path',
        join(root, 'none.sock'),
        '--audience',
        'db',
        '--json',
      ])
      assert.equal(
        (JSON.parse(gone.stderr) as { error: { code: string } }).error.code,
        'ERR_WORKLOAD_API',
      )
    },
  )
})
