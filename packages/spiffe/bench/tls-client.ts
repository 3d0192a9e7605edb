/**
 * The bench's client, in its own process:
 *   node tls-client.js source <endpoint-socket> <port> <ms>
 *   node tls-client.js files <dir with key.pem cert.pem ca.pem> <port> <ms>
 * Makes full TLS handshakes one after another (no session reuse) for <ms>; prints {"n","ms"}.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import * as tls from 'node:tls'
import { authorizeAny, createX509Source, tlsClientOptions } from '../src/index.js'

const [mode, where, portArg, msArg] = process.argv.slice(2) as [string, string, string, string]
const port = Number(portArg)
const windowMs = Number(msArg)

async function options(): Promise<{ opts: tls.ConnectionOptions; close: () => void }> {
  if (mode === 'source') {
    const source = createX509Source({ address: `unix://${where}` })
    await source.ready({ timeoutMs: 20_000 })
    return { opts: tlsClientOptions(source, authorizeAny()), close: () => source.close() }
  }
  const read = (f: string) => readFileSync(join(where, f))
  return {
    // The baseline: the same certificates from files, read once into one SecureContext (the
    // cheapest way to use files: passing key/cert/ca per connect rebuilds a context each time),
    // chain checked by OpenSSL, no SPIFFE check.
    opts: {
      secureContext: tls.createSecureContext({
        key: read('client-key.pem'),
        cert: read('client-cert.pem'),
        ca: read('ca.pem'),
      }),
      checkServerIdentity: () => undefined,
    },
    close: () => {},
  }
}

function handshake(opts: tls.ConnectionOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ...opts }, () => {
      s.end()
      s.destroy()
      resolve()
    })
    s.once('error', reject)
  })
}

const { opts, close } = await options()
for (let i = 0; i < 20; i++) await handshake(opts) // warm-up
let n = 0
const start = performance.now()
while (performance.now() - start < windowMs) {
  await Promise.all([handshake(opts), handshake(opts)])
  n += 2
}
const ms = performance.now() - start
close()
process.stdout.write(`${JSON.stringify({ n, ms })}\n`)
