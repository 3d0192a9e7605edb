/**
 * The insecure-bootstrap node client loads no TLS roots: it verifies only the server's SPIFFE ID,
 * so reading and parsing the system bundle GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names (what grpc-js's
 * createSsl(null) does) was pure cost, 40-80 ms per agent start on the development machine. A
 * child process with that variable naming a missing file attests against a real server: with
 * the roots read, constructing the client throws ENOENT.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { startTestServer } from '../helpers/server.js'

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const mod = (p: string) => JSON.stringify(pathToFileURL(join(dist, p)).href)

test('an insecure-bootstrap agent attests without reading the default TLS roots file', async () => {
  await using s = await startTestServer()
  const token = await s.token()
  const script = `
    import { GrpcNodeClient } from ${mod('src/transport/grpc-client.js')}
    import { joinTokenAgentAttestor } from ${mod('src/attestors/join-token/agent.js')}
    import { MemoryKeyManager } from ${mod('src/keymanager/memory.js')}
    import { TrustDomain } from ${mod('src/spiffe/id.js')}
    const client = new GrpcNodeClient({
      address: ${JSON.stringify(s.address)},
      trustDomain: TrustDomain.parse('example.org'),
      bundle: 'insecure',
    })
    const key = await new MemoryKeyManager().generateKey('agent', 'ec-p256')
    const r = await client.attestAgent(joinTokenAgentAttestor(${JSON.stringify(token)}), key)
    client.close()
    console.log(r.svid.spiffeId)
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH: '/nonexistent/roots.pem' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString()
  })
  const code = await new Promise<number | null>((r) => child.on('close', r))
  assert.equal(code, 0, err)
  assert.match(out, /^spiffe:\/\/example\.org\/spire\/agent\/join_token\//)
})
