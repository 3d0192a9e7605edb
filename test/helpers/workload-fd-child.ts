/**
 * For the exec-after-connect test: started by a process that connected to the Workload API and
 * forked, with that connection as fd <fd> (not 3: libuv takes low fds at start). Waits until its parent runs `target` (the parent execs it;
 * '-' = do not wait), then calls FetchJWTSVID over the inherited connection (plain HTTP/2, as the
 * connection is not ours to dial) and prints {"status":N,"ids":[...]} as one JSON line.
 *   node dist/test/helpers/workload-fd-child.js <fd> <ppid> <target|->
 */
import { readlinkSync } from 'node:fs'
import { connect } from 'node:http2'
import { Socket } from 'node:net'
import { workloadCodec } from '../../src/agent/workload-api/proto.js'

const [fd, ppid, target] = process.argv.slice(2)
const deadline = Date.now() + 5000
while (target !== '-' && Date.now() < deadline) {
  let exe = ''
  try {
    exe = readlinkSync(`/proc/${ppid}/exe`)
  } catch {
    // not yet readable
  }
  if (exe === target) break
  await new Promise((r) => setTimeout(r, 20))
}
const sock = new Socket({ fd: Number(fd), readable: true, writable: true })
const session = connect('http://localhost', { createConnection: () => sock })
session.on('error', () => undefined)
const req = session.request({
  ':method': 'POST',
  ':path': '/SpiffeWorkloadAPI/FetchJWTSVID',
  'content-type': 'application/grpc',
  te: 'trailers',
  'workload.spiffe.io': 'true',
})
const body = workloadCodec.jwtSvidRequest.encode({ audience: ['a'], spiffeId: '' })
const frame = Buffer.alloc(5 + body.length)
frame.writeUInt32BE(body.length, 1)
Buffer.from(body).copy(frame, 5)
req.end(frame)
let status: string | undefined
let data = Buffer.alloc(0)
req.on('response', (h) => {
  if (h['grpc-status'] !== undefined) status = String(h['grpc-status'])
})
req.on('trailers', (h) => {
  status = String(h['grpc-status'])
})
req.on('data', (d: Buffer) => {
  data = Buffer.concat([data, d])
})
req.on('close', () => {
  const ids =
    data.length > 5
      ? workloadCodec.jwtSvidResponse.decode(data.subarray(5)).svids.map((s) => s.spiffeId)
      : []
  process.stdout.write(`${JSON.stringify({ status: Number(status ?? -1), ids })}\n`)
  session.destroy()
})
