import assert from 'node:assert/strict'
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

const HEALTH =
  '\n[health_checks]\nlistener_enabled = true\nbind_address = "127.0.0.1"\nbind_port = "0"\n'

/** The port the process logged for its health listener. */
function healthPort(stderr: string): number {
  const m = /"msg":"health checks listening","address":"127\.0\.0\.1:(\d+)"/.exec(stderr)
  assert.ok(m, stderr)
  return Number(m[1])
}

async function status(port: number, path: string): Promise<number> {
  return (await fetch(`http://127.0.0.1:${port}${path}`)).status
}

test("SPIRE's health_checks listener on a real server and agent: live, ready with the agent ID, gone with the process", async (t) => {
  const root = processDir('spiffe-edge-health-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const server = await startServerProcess(root, t, HEALTH)
  const sp = healthPort(server.stderr())
  assert.equal(await status(sp, '/live'), 200)
  assert.equal(await status(sp, '/ready'), 200)
  assert.equal(await status(sp, '/other'), 404)

  const bundle = join(root, 'bundle.pem')
  writeFileSync(bundle, await server.admin('bundle', 'show'))
  const token = JSON.parse(await server.admin('token', 'generate', '--json')).value as string
  const d = join(root, 'agent')
  mkdirSync(d)
  const agent = await startCli(
    agentArgs(
      writeAgentConfig(d, server.address, HEALTH),
      '--trust-bundle',
      bundle,
      '--join-token',
      token,
    ),
    t,
  )
  const ap = healthPort(agent.stderr())
  assert.equal(await status(ap, '/live'), 200)
  const ready = await fetch(`http://127.0.0.1:${ap}/ready`)
  assert.equal(ready.status, 200)
  assert.equal(((await ready.json()) as { agent_id: string }).agent_id, agent.first.agent_id)
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  // Gone with its process: nothing answers on the port any more.
  await assert.rejects(fetch(`http://127.0.0.1:${ap}/live`))
})
