/**
 * A client workload in its own process (the tests run it as another uid, so the agent attests it
 * as another SPIFFE ID):
 *   node workload-client.js https|grpc <endpoint-socket> <target> <expected-server-id>
 * Prints one JSON line: {"self","serverSeen","reply"} or {"error":{code,message}}.
 */
import * as https from 'node:https'
import * as grpc from '@grpc/grpc-js'
import {
  authorizeID,
  createX509Source,
  grpcChannelCredentials,
  peerSpiffeId,
  tlsClientOptions,
} from '../../src/index.js'
import { whoService } from './echo-service.js'

const [mode, socket, target, expected] = process.argv.slice(2) as [string, string, string, string]
const source = createX509Source({ address: `unix://${socket}` })
const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`)
try {
  await source.ready({ timeoutMs: 20_000 })
  const self = source.getX509Svid().id.toString()
  if (mode === 'https') {
    const opts = tlsClientOptions(source, authorizeID(expected))
    const r = await new Promise<{ reply: string; serverSeen: string }>((resolve, reject) => {
      const req = https.get(`https://${target}/`, { ...opts, agent: false }, (res) => {
        let body = ''
        res.on('data', (d: Buffer) => {
          body += d.toString()
        })
        res.on('end', () => resolve({ reply: body, serverSeen: String(peerSpiffeId(res.socket)) }))
      })
      req.on('error', reject)
    })
    out({ self, ...r })
  } else {
    const Client = grpc.makeGenericClientConstructor(whoService, 'Echo')
    const c = new Client(target, grpcChannelCredentials(source, authorizeID(expected)))
    const reply = await new Promise<string>((resolve, reject) =>
      (c as unknown as Record<string, (...a: unknown[]) => void>).Who!(
        Buffer.alloc(0),
        { deadline: new Date(Date.now() + 15_000) },
        (err: Error | null, b?: Buffer) => (err ? reject(err) : resolve(String(b))),
      ),
    )
    c.close()
    out({ self, reply, serverSeen: expected })
  }
} catch (err) {
  const e = err as { code?: unknown; message?: string }
  out({ error: { code: e.code, message: e.message } })
} finally {
  source.close()
}
