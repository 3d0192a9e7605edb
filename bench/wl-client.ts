/**
 * The client side of bench/workload-latency.ts: its own process (forked with an IPC channel), so
 * the client's work never shares an event loop with the server it measures. Raw grpc-js clients
 * passing bytes through (no decoding), the same for the agent and the bare server.
 *
 * Messages from the parent:
 *   {op:'latency', socket, method:'x509'|'jwt', workloads, calls}
 *       `workloads` connections, each making `calls` calls one after another; answers
 *       {lat: ms[], wallMs}. x509 = open FetchX509SVID, time to the first message, cancel.
 *   {op:'open', socket, connections, streams}
 *       opens `streams` FetchX509SVID streams at once spread over `connections`; answers {ms}
 *       (until every first message arrived) and keeps them open, then {op:'awaitSecond'} answers
 *       {last}: the hrtime (ms, CLOCK_MONOTONIC) at which the last stream got its second message.
 *   {op:'closeAll'}, {op:'quit'}
 */
import * as grpc from '@grpc/grpc-js'
import { workloadServiceDefinition } from '../src/agent/workload-api/service.js'

type Raw = grpc.Client & Record<string, (...a: unknown[]) => unknown>
const Ctor = grpc.makeGenericClientConstructor(workloadServiceDefinition, 'SpiffeWorkloadAPI')
const now = () => Number(process.hrtime.bigint()) / 1e6
const send = (m: unknown) => process.send!(m)
const md = new grpc.Metadata()
md.set('workload.spiffe.io', 'true')
const JWT_REQ = Buffer.from([0x0a, 0x05, ...Buffer.from('bench')])

let seq = 0
function connect(socket: string): Raw {
  // A distinct channel option per client gives each its own connection (grpc-js shares otherwise).
  return new Ctor(`unix:${socket}`, grpc.credentials.createInsecure(), {
    'grpc.bench_conn': ++seq,
    'grpc.max_receive_message_length': 4 << 20,
  }) as unknown as Raw
}

function firstX509(c: Raw): Promise<number> {
  const t = now()
  return new Promise((resolve, reject) => {
    const call = c.FetchX509SVID!(Buffer.alloc(0), md) as grpc.ClientReadableStream<Buffer>
    call.once('data', () => {
      resolve(now() - t)
      call.cancel()
    })
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) reject(e)
    })
  })
}

function jwt(c: Raw): Promise<number> {
  const t = now()
  return new Promise((resolve, reject) =>
    c.FetchJWTSVID!(JWT_REQ, md, (err: Error | null) => (err ? reject(err) : resolve(now() - t))),
  )
}

async function latency(
  socket: string,
  method: 'x509' | 'jwt',
  workloads: number,
  calls: number,
): Promise<{ lat: number[]; wallMs: number }> {
  const clients = Array.from({ length: workloads }, () => connect(socket))
  const one = method === 'x509' ? firstX509 : jwt
  try {
    await Promise.all(clients.map((c) => one(c).then(() => one(c)))) // connect, warm up
    const lat: number[] = []
    const t = now()
    await Promise.all(
      clients.map(async (c) => {
        for (let i = 0; i < calls; i++) lat.push(await one(c))
      }),
    )
    return { lat, wallMs: now() - t }
  } finally {
    for (const c of clients) c.close()
  }
}

let held: { clients: Raw[]; calls: grpc.ClientReadableStream<Buffer>[]; second: Promise<number> }

async function open(socket: string, connections: number, streams: number): Promise<number> {
  const clients = Array.from({ length: connections }, () => connect(socket))
  // Connect first: the measure is the streams' first messages, not connection set-up.
  await Promise.all(
    clients.map(
      (c) =>
        new Promise<void>((resolve, reject) =>
          c.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())),
        ),
    ),
  )
  const calls: grpc.ClientReadableStream<Buffer>[] = []
  const firsts: Promise<void>[] = []
  const seconds: Promise<number>[] = []
  const t = now()
  for (let i = 0; i < streams; i++) {
    const call = clients[i % connections]!.FetchX509SVID!(
      Buffer.alloc(0),
      md,
    ) as grpc.ClientReadableStream<Buffer>
    calls.push(call)
    let n = 0
    let first!: () => void
    let second!: (t: number) => void
    firsts.push(new Promise((r) => (first = r)))
    seconds.push(new Promise((r) => (second = r)))
    call.on('data', () => {
      n++
      if (n === 1) first()
      else if (n === 2) second(now())
    })
    call.on('error', () => undefined)
  }
  await Promise.all(firsts)
  const ms = now() - t
  held = {
    clients,
    calls,
    second: Promise.all(seconds).then((ts) => Math.max(...ts)),
  }
  return ms
}

interface Cmd {
  op: 'latency' | 'open' | 'awaitSecond' | 'closeAll' | 'quit'
  socket: string
  method: 'x509' | 'jwt'
  workloads: number
  calls: number
  connections: number
  streams: number
}

process.on('message', async (m: Cmd) => {
  try {
    if (m.op === 'latency') send(await latency(m.socket, m.method, m.workloads, m.calls))
    else if (m.op === 'open') send({ ms: await open(m.socket, m.connections, m.streams) })
    else if (m.op === 'awaitSecond') send({ last: await held.second })
    else if (m.op === 'closeAll') {
      for (const c of held.calls) c.cancel()
      for (const c of held.clients) c.close()
      send({ ok: true })
    } else if (m.op === 'quit') process.exit(0)
  } catch (err) {
    send({ error: (err as Error).message })
  }
})
send({ ready: true })
