// An mTLS handshake between two workloads' X.509-SVIDs (files from `api fetch x509 -write`):
// the server side trusts the client's domain bundle, the client side the server's, and each
// checks the peer's SPIFFE ID (URI SAN), as a workload of either domain would.
// usage: node mtls-check.mjs SERVER_SVID_DIR EXPECTED_CLIENT_ID CLIENT_SVID_DIR EXPECTED_SERVER_ID
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import tls from 'node:tls'

const [serverDir, clientId, clientDir, serverId] = process.argv.slice(2)
const files = (d) => ({
  cert: readFileSync(join(d, 'svid.0.pem')),
  key: readFileSync(join(d, 'svid.0.key')),
  ca: readFileSync(join(d, 'federated_bundle.0.0.pem')),
})
const uriOf = (cert) => (cert?.subjectaltname ?? '').replace(/^URI:/, '')
const fail = (m) => {
  console.error(`mTLS: ${m}`)
  process.exit(1)
}
setTimeout(() => fail('timed out'), 10_000).unref()

const server = tls.createServer(
  { ...files(serverDir), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' },
  (sock) => {
    const peer = uriOf(sock.getPeerCertificate())
    if (peer !== clientId) fail(`server saw client ${peer}, expected ${clientId}`)
    sock.end(`hello ${peer}, this is ${serverId}\n`)
  },
)
server.listen(0, '127.0.0.1', () => {
  const c = tls.connect({
    ...files(clientDir),
    host: '127.0.0.1',
    port: server.address().port,
    // SPIFFE: the name to check is the peer's SPIFFE ID, not a host name.
    checkServerIdentity: (_h, cert) =>
      uriOf(cert) === serverId
        ? undefined
        : new Error(`server is ${uriOf(cert)}, expected ${serverId}`),
  })
  let got = ''
  c.on('data', (d) => {
    got += d
  })
  c.on('error', (e) => fail(e.message))
  c.on('end', () => {
    console.log(`   client ${clientId} connected to ${serverId}; it said: ${got.trim()}`)
    server.close()
  })
})
