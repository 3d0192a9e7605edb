/**
 * The workload side of bench/offline-start.ts, in its own process: imports done, it says "ready"
 * and waits for "go" on stdin, then polls FetchX509SVID every 10 ms until it gets an SVID that
 * validates, and prints when (epoch ms).
 */
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { workloadClient } from '../src/agent/workload-api/client.js'
import { TrustBundle } from '../src/spiffe/bundle.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { validateX509Svid } from '../src/spiffe/x509-svid.js'

const sock = process.argv[2]!
const td = TrustDomain.parse('example.org')
process.stdout.write('ready\n')
await new Promise<void>((r) => createInterface({ input: process.stdin }).once('line', () => r()))
const end = Date.now() + 60_000
while (Date.now() < end) {
  const c = workloadClient(`unix://${sock}`, { ownConnection: true, timeoutMs: 1000 })
  try {
    const s = (await c.fetchX509()).svids[0]
    if (s) {
      const b = new TrustBundle({ trustDomain: td, x509Authorities: s.bundle }).x509Bundle()
      validateX509Svid(s.chain, (d) => (d.equals(td) ? b : undefined), new Date())
      process.stdout.write(
        `${JSON.stringify({ servedAt: Date.now(), leaf: Buffer.from(s.chain[0]!).toString('hex').slice(-32) })}\n`,
      )
      process.exit(0)
    }
  } catch {
    // not up yet
  } finally {
    c.close()
  }
  await sleep(10)
}
process.exit(1)
