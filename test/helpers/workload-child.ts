/**
 * A Workload API client run as another user by the integration tests:
 *   node dist/test/helpers/workload-child.js <socket> x509|jwt
 * Prints {"ids":[...]} or {"error":{"code":...,"status":...}} as one JSON line.
 */

import { workloadClient } from '../../src/agent/workload-api/client.js'
import { WorkloadApiError } from '../../src/agent/workload-api/errors.js'

const [socket, what] = process.argv.slice(2)
const client = workloadClient(`unix://${socket}`)
try {
  const ids =
    what === 'jwt'
      ? (await client.fetchJwt(['test-audience'])).map((s) => s.spiffeId)
      : (await client.fetchX509()).svids.map((s) => s.spiffeId)
  process.stdout.write(`${JSON.stringify({ ids, uid: process.getuid?.() })}\n`)
} catch (err) {
  const status = err instanceof WorkloadApiError ? err.status : -1
  process.stdout.write(`${JSON.stringify({ error: { status, message: String(err) } })}\n`)
} finally {
  client.close()
}
