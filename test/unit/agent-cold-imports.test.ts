/**
 * What `spiffe-edge agent run` loads: a real agent process (join token, disk key manager, gRPC
 * transport, no [telemetry]) whose server is unreachable, with a module resolve hook logging every
 * ESM module it loads. The cold-start path (issue 13) must not load the other commands (server,
 * sim, admin API clients), prom-client, MQTT or PKCS#11: each is a few hundred ms on an edge box.
 * Nor @bufbuild/protobuf (ValidateJWTSVID only), @peculiar/x509, or the TPM and cloud attestors
 * it is not configured with: MiBs of the agent's RSS each (issue 16).
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { cliPath } from '../helpers/exec.js'

const HOOK = `import { appendFileSync } from 'node:fs'
export async function resolve(s, c, next) {
  const r = await next(s, c)
  appendFileSync(process.env.SE_MODULE_LOG, r.url + '\\n')
  return r
}
`
const REGISTER = `import { register } from 'node:module'
register('./hook.mjs', import.meta.url)
`

test('agent run loads only what the agent needs (no server, prom-client, MQTT, PKCS#11)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-cold-imports-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'hook.mjs'), HOOK)
  writeFileSync(join(dir, 'register.mjs'), REGISTER)
  const log = join(dir, 'modules.log')
  writeFileSync(log, '')
  const config = join(dir, 'agent.toml')
  writeFileSync(
    config,
    // Port 1 refuses: the agent gets as far as attesting (the transport loads), then gives up.
    `[agent]\ntrust_domain = "example.org"\nserver_address = "127.0.0.1:1"\ndata_dir = "./agent"\n` +
      `socket_path = "./agent/api.sock"\ninsecure_bootstrap = true\njoin_token = "abc"\n` +
      '[plugins.NodeAttestor.join_token]\n[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n',
  )
  const child = spawn(
    process.execPath,
    ['--import', join(dir, 'register.mjs'), cliPath, 'agent', 'run', '--config', config],
    { env: { ...process.env, SE_MODULE_LOG: log }, stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  const exited = new Promise((r) => child.once('exit', r))
  // Bounded: the agent either gives up on the server or is stopped once the transport is loaded.
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    if (readFileSync(log, 'utf8').includes('/transport/grpc-client.js')) break
    if (child.exitCode !== null) break
    await new Promise((r) => setTimeout(r, 50))
  }
  await new Promise((r) => setTimeout(r, 500)) // anything loaded alongside gets logged too
  child.kill('SIGKILL')
  await exited
  const urls = readFileSync(log, 'utf8').split('\n').filter(Boolean)
  const loaded = (part: string) => urls.some((u) => u.includes(part))
  // The agent did start: config, composition root, the node transport for attesting.
  assert.ok(loaded('/dist/src/agent/agent.js'), `agent.js not loaded; stderr: ${stderr}`)
  assert.ok(loaded('/dist/src/transport/grpc-client.js'), `no transport loaded; stderr: ${stderr}`)
  assert.ok(loaded('/dist/src/agent/workload-api/proto.js'), 'the Workload API codec not loaded')
  for (const part of [
    '/dist/src/server/',
    '/dist/src/cli/server',
    '/dist/src/cli/sim',
    '/dist/src/cli/api',
    '/dist/src/cli/oidc',
    '/dist/src/cli/tree.js',
    '/node_modules/prom-client/',
    '/node_modules/mqtt/',
    '/dist/src/transport/mqtt/',
    '/node_modules/pkcs11js/',
    '/dist/src/keymanager/pkcs11/',
    '/dist/src/agent/metrics.js',
    // Only ValidateJWTSVID's claims need it (src/agent/workload-api/proto.ts loads it then).
    '/node_modules/@bufbuild/protobuf/',
    // The agent reads certificates with node:crypto and src/spiffe/der.ts: @peculiar/x509 and
    // its ASN.1 schemas, reflect-metadata and tsyringe are ~12 MiB of RSS (bench/agent-modules.ts).
    '/node_modules/@peculiar/',
    '/node_modules/reflect-metadata/',
    '/node_modules/tsyringe/',
    '/dist/src/spiffe/x509-svid.js',
    // TPM and cloud attestors load only when configured (this agent uses a join token).
    '/dist/src/tpm/',
    '/dist/src/attestors/tpm/',
    '/dist/src/attestors/cloud/aws/agent.js',
    '/dist/src/attestors/cloud/gcp/agent.js',
    '/dist/src/attestors/cloud/azure/agent.js',
  ]) {
    assert.ok(!loaded(part), `agent run loaded ${part}`)
  }
})
