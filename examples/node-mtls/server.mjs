// A Node workload serving HTTPS with its SPIFFE identity; only spiffe://example.org/client may call.
// Run with SPIFFE_ENDPOINT_SOCKET set (run.sh does). Prints {"listening": port} when ready.
import https from 'node:https'
import { authorizeID, createX509Source, peerSpiffeId, tlsServerOptions } from '@spiffe-edge/spiffe'

const source = createX509Source({ hint: 'server' }) // this workload holds two SVIDs: pick ours
await source.ready({ timeoutMs: 30_000 })
const opts = tlsServerOptions(source, authorizeID('spiffe://example.org/client'))
const server = opts.attach(
  https.createServer(opts, (req, res) => {
    const peer = peerSpiffeId(req.socket)
    console.log(`server (${source.getX509Svid().id}): my peer is ${peer}`)
    res.end(`hello ${peer}, this is ${source.getX509Svid().id}\n`)
  }),
)
server.listen(0, '127.0.0.1', () =>
  console.log(JSON.stringify({ listening: server.address().port })),
)
process.on('SIGTERM', () => {
  server.close()
  source.close()
})
