/**
 * The simulated agents of bench/mqtt-fleet.ts, in their own process (not the server's, not the
 * orchestrator's). Each agent is what a real one holds for sync: its own key, its own
 * MqttNodeClient (own bootstrap session, then its own agent connection through the broker), and
 * the agent's EntrySync over an on-disk AgentStorage. Forked with IPC; messages:
 *   {op:'attest', job} → {op:'attested', ms, failed}: every agent attests with its join token,
 *     BENCH-bounded concurrency, then one untimed SyncEntries (the full first sync, saved);
 *   {op:'run', ms, intervalMs} → {op:'done', lat, errors}: every agent syncs (incremental, from its
 *     revision) for ms: back to back when intervalMs is 0, else once per interval (jittered start);
 *     lat holds every sync's latency in ms;
 *   {op:'quit'}.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { EntrySync } from '../src/agent/cache/entries.js'
import { AgentStorage } from '../src/agent/storage.js'
import { joinTokenAgentAttestor } from '../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { TrustBundle } from '../src/spiffe/bundle.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { MqttNodeClient } from '../src/transport/mqtt/client.js'
import type { AgentAuth } from '../src/transport/node-client.js'

export interface AgentsJob {
  readonly url: string
  readonly ca: string | undefined
  readonly bundle: string
  readonly tokens: readonly string[]
  /** Attestations in flight at once in this process. */
  readonly concurrency: number
}

interface Agent {
  readonly client: MqttNodeClient
  readonly auth: AgentAuth
  readonly sync: EntrySync
  readonly storage: AgentStorage
}

const td = TrustDomain.parse('example.org')
const agents: Agent[] = []
const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-fleet-'))
const send = (m: unknown) => process.send!(m)
// A call that outlives this is a failure, not a hang of the whole bench.
const CALL_TIMEOUT_MS = 60_000

async function attestAll(job: AgentsJob): Promise<void> {
  const bundle = TrustBundle.fromSpiffeJson(td, job.bundle)
  const keys = new MemoryKeyManager()
  const ca = job.ca ? Buffer.from(job.ca) : undefined
  let next = 0
  let failed = 0
  const t0 = performance.now()
  const worker = async () => {
    for (let i = next++; i < job.tokens.length; i = next++) {
      const client = new MqttNodeClient({
        url: job.url,
        trustDomain: td,
        bundle,
        topicPrefix: 'spiffe-edge',
        ca,
        timeoutMs: CALL_TIMEOUT_MS,
      })
      try {
        const key = await keys.generateKey(`agent-${i}`, 'ec-p256')
        const r = await client.attestAgent(joinTokenAgentAttestor(job.tokens[i]!), key)
        const auth = { spiffeId: r.svid.spiffeId, chain: r.svid.certChain, signer: key }
        const storage = AgentStorage.open(join(dir, `agent-${i}.db`)).storage
        const sync = new EntrySync(client, storage)
        await sync.sync(auth)
        agents.push({ client, auth, sync, storage })
      } catch (err) {
        failed++
        client.close()
        if (failed <= 3) console.error(`agent ${i}: ${(err as Error).message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, job.concurrency) }, worker))
  send({ op: 'attested', ms: performance.now() - t0, failed, agents: agents.length })
}

async function run(ms: number, intervalMs: number): Promise<void> {
  const lat: number[] = []
  let errors = 0
  const end = performance.now() + ms
  const loop = async (a: Agent) => {
    // Spread the first syncs over one interval, as agents started at different times are.
    if (intervalMs > 0) await sleep(Math.random() * intervalMs)
    while (performance.now() < end) {
      const s = performance.now()
      try {
        await a.sync.sync(a.auth)
        lat.push(performance.now() - s)
      } catch (err) {
        errors++
        if (errors <= 3) console.error(`sync: ${(err as Error).message}`)
      }
      if (intervalMs > 0) {
        const wait = s + intervalMs - performance.now()
        if (wait > 0) await sleep(Math.min(wait, Math.max(0, end - performance.now())))
      }
    }
  }
  await Promise.all(agents.map(loop))
  send({ op: 'done', lat, errors })
}

process.on('message', (m: { op: string; job?: AgentsJob; ms?: number; intervalMs?: number }) => {
  const fail = (err: unknown) => {
    console.error(err)
    process.exit(1)
  }
  if (m.op === 'attest') attestAll(m.job!).catch(fail)
  else if (m.op === 'run') run(m.ms!, m.intervalMs ?? 0).catch(fail)
  else if (m.op === 'quit') {
    for (const a of agents) a.client.close()
    rmSync(dir, { recursive: true, force: true })
    // Let the MQTT disconnects go out before leaving.
    setTimeout(() => process.exit(0), 500)
  }
})
send({ op: 'ready' })
