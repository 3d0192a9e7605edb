/**
 * An SDS client run as another user by the integration tests:
 *   node dist/test/helpers/sds-child.js <socket>
 * Streams ["default", "ROOTCA"] as Envoy would and prints {"secrets":[names]} for the first
 * response or {"error":{"code":...,"details":...}} as one JSON line; FetchSecrets likewise after.
 */
import { decodeSecret, ENVOY_NODE, EnvoySdsClient } from './envoy-sds-client.js'

const [socket] = process.argv.slice(2)
const client = new EnvoySdsClient(socket!)
const out: Record<string, unknown> = { uid: process.getuid?.() }
const s = client.stream()
s.send({ node: ENVOY_NODE, resource_names: ['default', 'ROOTCA'] })
try {
  const r = await s.response(0, 15_000)
  out.stream = { secrets: r.resources.map((a) => decodeSecret(a).name) }
} catch (err) {
  const e = err as { code?: number; details?: string; message: string }
  out.stream = { error: { code: e.code ?? -1, details: e.details ?? e.message } }
}
s.close()
try {
  const r = await client.fetch({ node: ENVOY_NODE, resource_names: [] })
  out.fetch = { secrets: r.resources.map((a) => decodeSecret(a).name) }
} catch (err) {
  const e = err as { code?: number; details?: string; message: string }
  out.fetch = { error: { code: e.code ?? -1, details: e.details ?? e.message } }
}
client.close()
process.stdout.write(`${JSON.stringify(out)}\n`)
