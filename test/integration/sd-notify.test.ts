/**
 * Type=notify without systemd in the loop but with its real wire protocol: a python3 AF_UNIX
 * datagram socket stands in for systemd's NOTIFY_SOCKET (a path for the server, an abstract
 * '@name' for the agent). Real `server run` / `agent run` processes. The listener, the moment
 * READY=1 arrives, connects to what STATUS says is served (the node API port, the admin socket,
 * the Workload API socket): readiness is only claimed once they accept. SIGHUP is RELOADING=1
 * then READY=1; SIGTERM is STOPPING=1.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { notifySocket } from '../helpers/notify-socket.js'

test('server run: READY=1 once the node API and admin socket accept; RELOADING on SIGHUP; STOPPING on SIGTERM', async (t) => {
  const root = processDir('spiffe-edge-notify-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const admin = join(root, 'server', 'admin.sock')
  const sd = await notifySocket(join(root, 'notify.sock'), t, admin)
  const server = await startServerProcess(root, t, '', 0, {
    ...process.env,
    NOTIFY_SOCKET: join(root, 'notify.sock'),
  })
  const ready = await sd.next()
  assert.equal(ready.fields.READY, '1')
  assert.equal(ready.pid, server.child.pid, 'sent by the main PID (SCM_CREDENTIALS)')
  assert.match(ready.fields.STATUS ?? '', /^serving example\.org on /)
  assert.deepEqual(ready.accepts, { [server.address]: true, [admin]: true })

  server.child.kill('SIGHUP')
  const reloading = await sd.next()
  assert.equal(reloading.fields.RELOADING, '1')
  assert.match(reloading.fields.MONOTONIC_USEC ?? '', /^\d+$/)
  assert.equal((await sd.next()).fields.READY, '1')

  server.child.kill('SIGTERM')
  assert.equal((await sd.next()).fields.STOPPING, '1')
  assert.equal(await server.exited, 0, server.stderr())
})

test('agent run: READY=1 to an abstract NOTIFY_SOCKET once the Workload API accepts', async (t) => {
  const root = processDir('spiffe-edge-notify-agent-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const server = await startServerProcess(root, t)
  const token = JSON.parse(await server.admin('token', 'generate', '-output', 'json'))
    .value as string
  const name = `@spiffe-edge-test-${randomBytes(6).toString('hex')}`
  const sd = await notifySocket(name, t)
  const d = join(root, 'agent-a')
  mkdirSync(d)
  const agent = await startCli(
    agentArgs(writeAgentConfig(d, server.address), '-insecureBootstrap', '-joinToken', token),
    t,
    { env: { ...process.env, NOTIFY_SOCKET: name } },
  )
  const ready = await sd.next()
  assert.equal(ready.fields.READY, '1')
  assert.equal(ready.pid, agent.child.pid, 'sent by the main PID')
  assert.deepEqual(ready.accepts, { [String(agent.first.socket_path)]: true })
  agent.child.kill('SIGTERM')
  assert.equal((await sd.next()).fields.STOPPING, '1')
  assert.equal(await agent.exited, 0, agent.stderr())
})
