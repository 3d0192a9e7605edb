import assert from 'node:assert/strict'
import { createServer, type Server } from 'node:http'
import { test } from 'node:test'
import { parseAwsAgentConfig } from '../../src/attestors/cloud/aws/agent.js'
import { metadataCall } from '../../src/attestors/cloud/common.js'
import { gcpAgentAttestor, parseGcpAgentConfig } from '../../src/attestors/cloud/gcp/agent.js'

async function serve(
  handler: Parameters<typeof createServer>[1],
): Promise<{ url: string; server: Server }> {
  const server = createServer(handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, server }
}
const close = (s: Server) => {
  s.closeAllConnections()
  return new Promise<void>((r) => s.close(() => r()))
}
const metadataError = (re: RegExp) => (e: unknown) =>
  (e as { code?: string }).code === 'ERR_CLOUD_METADATA' && re.test((e as Error).message)

test('metadata calls are bounded: deadline, size cap, no redirects, non-2xx named', async (t) => {
  const { url, server } = await serve((req, res) => {
    if (req.url === '/hang') return // never answers
    if (req.url === '/slow-body') {
      res.writeHead(200)
      res.write('a') // then nothing: the deadline covers the body too
      return
    }
    if (req.url === '/big') {
      res.writeHead(200)
      res.end('x'.repeat(100_000))
      return
    }
    if (req.url === '/declared') {
      res.writeHead(200, { 'Content-Length': '10000000' })
      res.write('x')
      return
    }
    if (req.url === '/redirect') {
      res.writeHead(302, { Location: 'http://127.0.0.1:1/elsewhere' })
      res.end()
      return
    }
    res.writeHead(401)
    res.end('no token')
  })
  t.after(() => close(server))
  const started = Date.now()
  await assert.rejects(
    metadataCall('hang', { url: `${url}/hang`, timeoutMs: 300 }),
    metadataError(/did not answer/),
  )
  await assert.rejects(
    metadataCall('slow', { url: `${url}/slow-body`, timeoutMs: 300 }),
    metadataError(/reading/),
  )
  assert.ok(Date.now() - started < 10_000)
  await assert.rejects(metadataCall('big', { url: `${url}/big` }), metadataError(/over 65536/))
  await assert.rejects(
    metadataCall('declared', { url: `${url}/declared` }),
    metadataError(/10000000 bytes/),
  )
  await assert.rejects(
    metadataCall('redirect', { url: `${url}/redirect` }),
    metadataError(/did not answer/),
  )
  await assert.rejects(
    metadataCall('status', { url: `${url}/x` }),
    metadataError(/answered 401: no token/),
  )
})

test('the gcp_iit agent refuses an answer that is not from a GCP metadata server', async (t) => {
  let asked: Record<string, unknown> = {}
  const { url, server } = await serve((req, res) => {
    asked = { url: req.url, flavor: req.headers['metadata-flavor'] }
    res.writeHead(200) // no Metadata-Flavor: Google in the answer
    res.end('eyJ.token.x')
  })
  t.after(() => close(server))
  const agent = gcpAgentAttestor(parseGcpAgentConfig({ metadata_url: url, audience: 'aud-1' }))
  await assert.rejects(agent.payload(), metadataError(/not a GCP metadata server/))
  assert.equal(asked.flavor, 'Google')
  assert.equal(
    asked.url,
    '/computeMetadata/v1/instance/service-accounts/default/identity?audience=aud-1&format=full',
  )
})

test('agent configs refuse unknown keys and bad values', () => {
  assert.throws(() => parseAwsAgentConfig({ signature: 'md5' }), /signature: must be one of/)
  assert.throws(() => parseAwsAgentConfig({ metadata_url: 'file:///etc' }), /metadata_url/)
  assert.throws(() => parseGcpAgentConfig({ audiences: 'x' }), /audiences: unknown key/)
  assert.equal(parseAwsAgentConfig({}).metadataUrl, 'http://169.254.169.254')
})
