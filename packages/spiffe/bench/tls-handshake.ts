/**
 * TLS handshakes per second with certificates from an X509Source against the same certificates
 * loaded from files, in one run (the issue's goal: at least 0.9x). Both servers live in this
 * process, the client in its own; rounds alternate files/source so machine load hits both.
 * The SVIDs come from a Workload API built from the spec's proto (test/helpers), so the figure
 * is the library's cost alone.
 *
 * Run: npm run build && node dist/packages/spiffe/bench/tls-handshake.js
 *      (BENCH_WINDOW_MS per round, default 3000; BENCH_ROUNDS, default 3)
 */
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import * as tls from 'node:tls'
import { fileURLToPath } from 'node:url'
import { certificateToPem } from '../../../src/spiffe/bundle.js'
import { authorizeAny, createX509Source, tlsServerOptions } from '../src/index.js'
import { startFixedWorkloadApi } from '../test/helpers/fixed-workload-api.js'
import { issue, testCa } from '../test/helpers/pki.js'

const WINDOW = Number(process.env.BENCH_WINDOW_MS ?? 3000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const here = dirname(fileURLToPath(import.meta.url))
const dir = mkdtempSync(join(tmpdir(), 'spiffe-lib-bench-'))

try {
  const ca = await testCa('bench.test')
  const serverSvid = await issue(ca, '/server')
  const clientSvid = await issue(ca, '/client')
  const pem = (der: Uint8Array) => certificateToPem(der)
  const keyPem = (k: typeof serverSvid) => k.privateKey.export({ type: 'pkcs8', format: 'pem' })
  writeFileSync(join(dir, 'server-cert.pem'), pem(serverSvid.chain))
  writeFileSync(join(dir, 'server-key.pem'), keyPem(serverSvid))
  writeFileSync(join(dir, 'client-cert.pem'), pem(clientSvid.chain))
  writeFileSync(join(dir, 'client-key.pem'), keyPem(clientSvid))
  writeFileSync(join(dir, 'ca.pem'), pem(ca.certificate))

  const serverApi = await startFixedWorkloadApi(join(dir, 'server.sock'), {
    svids: [{ svid: serverSvid, ca }],
    federated: [],
  })
  const clientApi = await startFixedWorkloadApi(join(dir, 'client.sock'), {
    svids: [{ svid: clientSvid, ca }],
    federated: [],
  })
  const source = createX509Source({ address: serverApi.address })
  await source.ready()

  const onConn = (s: tls.TLSSocket) => {
    s.on('error', () => {})
    s.resume()
  }
  const opts = tlsServerOptions(source, authorizeAny())
  const libServer = opts.attach(tls.createServer(opts, onConn))
  const read = (f: string) => readFileSync(join(dir, f))
  const fileServer = tls.createServer(
    {
      key: read('server-key.pem'),
      cert: read('server-cert.pem'),
      ca: read('ca.pem'),
      requestCert: true,
      rejectUnauthorized: true,
    },
    onConn,
  )
  for (const s of [libServer, fileServer]) {
    s.on('tlsClientError', () => {})
    s.listen(0, '127.0.0.1')
    await once(s, 'listening')
  }
  const portOf = (s: tls.Server) => (s.address() as { port: number }).port

  const client = (mode: 'source' | 'files', port: number) =>
    new Promise<number>((resolve, reject) => {
      const where = mode === 'source' ? join(dir, 'client.sock') : dir
      execFile(
        process.execPath,
        [join(here, 'tls-client.js'), mode, where, String(port), String(WINDOW)],
        (err, stdout) => {
          if (err) return reject(err)
          const r = JSON.parse(stdout.trim()) as { n: number; ms: number }
          resolve((r.n * 1000) / r.ms)
        },
      )
    })

  const rates = { files: [] as number[], source: [] as number[] }
  for (let i = 0; i < ROUNDS; i++) {
    rates.files.push(await client('files', portOf(fileServer)))
    rates.source.push(await client('source', portOf(libServer)))
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  const f = mean(rates.files)
  const s = mean(rates.source)
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ')
  console.log(
    `handshakes/s, certificates from files:  ${f.toFixed(0)}  (rounds: ${fmt(rates.files)})`,
  )
  console.log(
    `handshakes/s, certificates from source: ${s.toFixed(0)}  (rounds: ${fmt(rates.source)})`,
  )
  console.log(`ratio source/files: ${(s / f).toFixed(3)}x (goal >= 0.9x)`)
  libServer.close()
  fileServer.close()
  source.close()
  await serverApi.close()
  await clientApi.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}
