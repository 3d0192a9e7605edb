import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { workloadClient } from '../../src/agent/workload-api/client.js'
import {
  agentArgs,
  fetchValidSvids,
  hostTokenFor,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import { cli, repoRoot } from '../helpers/exec.js'
import { labelValues, sample } from '../helpers/prom-text.js'

const TELEMETRY = '\n[telemetry.Prometheus]\nhost = "127.0.0.1"\nport = 0\n'

function metricsPort(stderr: string): number {
  const m = /"msg":"metrics listening","address":"127\.0\.0\.1:(\d+)"/.exec(stderr)
  assert.ok(m, stderr)
  return Number(m[1])
}

async function scrape(port: number): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${port}/metrics`)
  assert.equal(r.status, 200)
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain/)
  return r.text()
}

test('Prometheus metrics from a real server and agent move with attestation, sync and Workload API calls', async (t) => {
  const root = processDir('spiffe-edge-metrics-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const server = await startServerProcess(root, t, TELEMETRY)
  const sp = metricsPort(server.stderr())
  const before = await scrape(sp)
  // The server's own SVID was signed at start; no agent has attested yet.
  assert.equal(sample(before, 'spire_server_server_ca_sign_x509_svid', { svid_kind: 'server' }), 1)
  assert.equal(sample(before, 'spire_server_rpc_agent_v1_agent_attest_agent'), undefined)
  assert.equal(sample(before, 'spire_server_started', { trust_domain_id: 'example.org' }), 1)
  // Only GET /metrics is served.
  assert.equal((await fetch(`http://127.0.0.1:${sp}/metrics`, { method: 'POST' })).status, 405)
  assert.equal((await fetch(`http://127.0.0.1:${sp}/other`)).status, 404)

  const bundle = join(root, 'bundle.pem')
  writeFileSync(bundle, await server.admin('bundle', 'show'))
  const token = await hostTokenFor(server, 'spiffe://example.org/w')
  const d = join(root, 'agent')
  mkdirSync(d)
  const agent = await startCli(
    agentArgs(
      writeAgentConfig(d, server.address, `sync_interval = "1s"\n${TELEMETRY}`),
      // Outside the 0700 data dir, so another local user (nobody, below) can connect.
      '--socket-path',
      join(d, 'public', 'api.sock'),
      '--trust-bundle',
      bundle,
      '--join-token',
      token,
    ),
    t,
  )
  const ap = metricsPort(agent.stderr())
  const socket = String(agent.first.socket_path)
  assert.deepEqual(await fetchValidSvids(socket), ['spiffe://example.org/w'])
  const c = workloadClient(`unix://${socket}`, { ownConnection: true, timeoutMs: 5000 })
  try {
    await c.fetchJwt(['metrics-test'])
    // An identity this caller is not entitled to: refused, and counted with its status.
    await assert.rejects(c.fetchJwt(['metrics-test'], 'spiffe://example.org/not-mine'))
    // This client's connection is open while it is in use.
    const during = await scrape(ap)
    assert.ok((sample(during, 'spire_agent_workload_api_connections') ?? 0) >= 1)
  } finally {
    c.close()
  }
  // A stream that fails: a caller (nobody) with no entry is refused FetchX509SVID.
  const nobody =
    process.getuid?.() === 0
      ? await new Promise<Record<string, unknown>>((resolve, reject) => {
          const child = join(repoRoot, 'dist', 'test', 'helpers', 'workload-child.js')
          const p = spawn(process.execPath, [child, socket, 'x509'], {
            uid: 65534,
            gid: 65534,
            stdio: ['ignore', 'pipe', 'inherit'],
          })
          let out = ''
          p.stdout.on('data', (b: Buffer) => {
            out += b.toString()
          })
          p.on('error', reject)
          p.on('close', () => resolve(JSON.parse(out) as Record<string, unknown>))
        })
      : undefined

  // A spent join token: the attestation fails and is counted by result and attestor.
  const d2 = join(root, 'agent2')
  mkdirSync(d2)
  const second = await cli(
    agentArgs(
      writeAgentConfig(d2, server.address),
      '--trust-bundle',
      bundle,
      '--join-token',
      token,
    ),
  )
  assert.notEqual(second.code, 0)

  const s = await scrape(sp)
  const refused = [...labelValues(s, 'spire_server_rpc_agent_v1_agent_attest_agent{', 'status')]
  assert.ok(
    refused.some((st) => st !== 'OK'),
    `a failed attestation has a non-OK status: ${refused.join(',')}`,
  )
  assert.deepEqual(
    [...labelValues(s, 'spire_server_rpc_agent_v1_agent_attest_agent{', 'attestor')],
    ['join_token'],
  )
  assert.equal(
    sample(s, 'spire_server_rpc_agent_v1_agent_attest_agent', {
      status: 'OK',
      attestor: 'join_token',
    }),
    1,
  )
  assert.equal(sample(s, 'spire_server_server_ca_sign_x509_svid', { svid_kind: 'agent' }), 1)
  assert.ok(
    (sample(s, 'spire_server_server_ca_sign_x509_svid', { svid_kind: 'workload' }) ?? 0) >= 1,
  )
  assert.equal(sample(s, 'spire_server_server_ca_sign_jwt_svid'), 1)
  assert.ok(
    (sample(s, 'spire_server_rpc_node_v1_node_call', { method: 'SyncEntries', status: 'OK' }) ??
      0) >= 1,
  )
  assert.ok(
    (sample(s, 'spire_server_rpc_node_v1_node_call_elapsed_seconds_count', {
      method: 'BatchNewX509SVID',
      status: 'OK',
    }) ?? 0) >= 1,
  )
  // The datastore check runs on the server's tick; it is healthy from the start.
  assert.equal(sample(s, 'spire_server_datastore_healthy'), 1)

  const a = await scrape(ap)
  assert.equal(sample(a, 'spire_agent_node_attestor_new_svid', { status: 'OK' }), 1)
  assert.equal(
    sample(a, 'spire_agent_rpc_workload_api', { method: 'FetchX509SVID', status: 'OK' }),
    1,
  )
  assert.equal(
    sample(a, 'spire_agent_rpc_workload_api', { method: 'FetchJWTSVID', status: 'OK' }),
    1,
  )
  assert.equal(
    sample(a, 'spire_agent_rpc_workload_api_elapsed_seconds_count', {
      method: 'FetchX509SVID',
      status: 'OK',
    }),
    1,
  )
  // The workload's SVID at least (what else the cache holds depends on the sync's entries).
  assert.ok((sample(a, 'spire_agent_lru_cache_svid_map_size') ?? 0) >= 1)
  assert.ok(
    (sample(a, 'spire_agent_manager_sync', { method: 'fetch_entries_updates', status: 'OK' }) ??
      0) >= 1,
  )
  const offline = sample(a, 'spire_agent_manager_sync_offline_seconds')
  assert.ok(offline !== undefined && offline < 30, String(offline))
  // The test's clients have closed their connections by now.
  assert.equal(sample(a, 'spire_agent_workload_api_connections'), 0)
  // Process metrics from prom-client, under the agent's prefix.
  assert.ok(sample(a, 'spire_agent_process_resident_memory_bytes') !== undefined)
  // Labels stay in closed sets: no SPIFFE ID or selector ever becomes a label value.
  for (const text of [s, a])
    for (const line of text.split('\n'))
      assert.ok(!line.includes('spiffe://') && !line.includes('unix:uid'), line)
  assert.deepEqual([...labelValues(a, 'spire_agent_rpc_workload_api{', 'method')].sort(), [
    'FetchJWTSVID',
    'FetchX509SVID',
  ])
  const jwtStatuses = [
    ...labelValues(a, 'spire_agent_rpc_workload_api{method="FetchJWTSVID"', 'status'),
  ]
  assert.equal(jwtStatuses.length, 2, jwtStatuses.join(','))
  assert.ok(jwtStatuses.includes('OK'))
  if (nobody) {
    assert.ok(nobody.error, JSON.stringify(nobody))
    const x509Statuses = [
      ...labelValues(a, 'spire_agent_rpc_workload_api{method="FetchX509SVID"', 'status'),
    ]
    assert.equal(x509Statuses.length, 2, `${x509Statuses.join(',')} ${JSON.stringify(nobody)}`)
  }

  // The server goes away: the agent's offline time grows and failures are counted.
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0)
  let late = a
  for (let i = 0; i < 40; i++) {
    await new Promise((r) => setTimeout(r, 500))
    late = await scrape(ap)
    if ((sample(late, 'spire_agent_manager_sync_consecutive_failures') ?? 0) >= 1) break
  }
  assert.ok((sample(late, 'spire_agent_manager_sync_consecutive_failures') ?? 0) >= 1, late)
  const unavailable = [...labelValues(late, 'spire_agent_manager_sync{', 'status')]
  assert.ok(
    unavailable.some((st) => st !== 'OK'),
    unavailable.join(','),
  )
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0)
  await assert.rejects(fetch(`http://127.0.0.1:${ap}/metrics`))
})
