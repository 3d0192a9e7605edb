// A Node workload calling the server over mTLS; it talks only to spiffe://example.org/server.
//   SPIFFE_ENDPOINT_SOCKET=unix:///path/api.sock node client.mjs https://127.0.0.1:PORT/
import https from 'node:https'
import { authorizeID, createX509Source, peerSpiffeId, tlsClientOptions } from '@spiffe-edge/spiffe'

const source = createX509Source({ hint: 'client' })
await source.ready({ timeoutMs: 30_000 })
const opts = tlsClientOptions(source, authorizeID('spiffe://example.org/server'))
const req = https.get(process.argv[2], { ...opts, agent: false }, (res) => {
  let body = ''
  res.on('data', (d) => {
    body += d
  })
  res.on('end', () => {
    console.log(`client (${source.getX509Svid().id}): my peer is ${peerSpiffeId(res.socket)}`)
    console.log(`client got: ${body.trim()}`)
    source.close()
  })
})
req.on('error', (err) => {
  console.error(`client: ${err.code ?? ''} ${err.message}`)
  source.close()
  process.exitCode = 1
})
