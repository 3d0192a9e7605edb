/**
 * A stand-in for systemd's NOTIFY_SOCKET: a python3 AF_UNIX datagram socket (a path, or '@name'
 * for an abstract one) that reports each sd_notify datagram, and on READY=1 checks at once that
 * what STATUS names (and `alsoCheck`) accepts connections.
 */
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'

const LISTENER = `
import json, socket, struct, sys
path, extra = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
# As systemd does: the kernel stamps each datagram with its sender (NotifyAccess=main checks it).
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + path[1:] if path.startswith('@') else path)
print(json.dumps({'listening': True}), flush=True)
def accepts(target):
    try:
        if target.startswith('/'):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(2)
            c.connect(target)
        else:
            host, port = target.rsplit(':', 1)
            c = socket.create_connection((host, int(port)), timeout=2)
        c.close()
        return True
    except Exception as e:
        return str(e)
while True:
    raw, anc, _, _ = s.recvmsg(8192, socket.CMSG_SPACE(12))
    data = raw.decode()
    fields = dict(l.split('=', 1) for l in data.split('\\n') if '=' in l)
    out = {'fields': fields}
    for level, kind, cred in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            out['pid'] = struct.unpack('3i', cred[:12])[0]
    if fields.get('READY') == '1' and 'STATUS' in fields:
        targets = [fields['STATUS'].rsplit(' on ', 1)[1]] + extra
        out['accepts'] = {t: accepts(t) for t in targets}
    print(json.dumps(out), flush=True)
`

export interface Notice {
  fields: Record<string, string>
  /** The sender's PID, from the kernel (SCM_CREDENTIALS). */
  pid?: number
  accepts?: Record<string, true | string>
}

/** The stand-in for systemd's notify socket; `next()` waits (bounded) for the next datagram. */
export async function notifySocket(
  path: string,
  t: { after: (fn: () => Promise<void>) => void },
  ...alsoCheck: string[]
) {
  const child: ChildProcess = spawn('python3', ['-c', LISTENER, path, ...alsoCheck], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise((r) => child.once('exit', r))
  t.after(async () => {
    child.kill('SIGKILL')
    await exited
  })
  const queue: Notice[] = []
  let wake: (() => void) | undefined
  const lines = createInterface({ input: child.stdout! })
  let listening!: () => void
  const ready = new Promise<void>((r) => {
    listening = r
  })
  lines.on('line', (l) => {
    const m = JSON.parse(l) as Notice & { listening?: boolean }
    if (m.listening) return listening()
    queue.push(m)
    wake?.()
  })
  await ready
  return {
    all: queue,
    async next(ms = 10_000): Promise<Notice> {
      const deadline = Date.now() + ms
      while (queue.length === 0) {
        assert.ok(Date.now() < deadline, 'no notification arrived')
        await new Promise<void>((r) => {
          wake = r
          setTimeout(r, 200)
        })
      }
      return queue.shift()!
    },
  }
}
