/**
 * systemd's readiness protocol (sd_notify(3), Type=notify): "READY=1" once the service really
 * serves, "RELOADING=1" then "READY=1" around a SIGHUP reload, "STOPPING=1" when it begins to
 * stop. The datagram leaves from this process (the unit's main PID, so NotifyAccess=main accepts
 * it) through the peercred addon's sdNotify: Node's dgram has no AF_UNIX, and `systemd-notify`
 * run as a child sends from another PID (refused under NotifyAccess=main, and racy even with
 * --pid: systemd may read the sender's cgroup after it exited). Without NOTIFY_SOCKET nothing is
 * sent. A failed send is logged, never fatal: the service itself is up.
 */
import { loadPeerCred } from './peercred.js'

export type NotifyLog = (message: string, fields: Record<string, unknown>) => void

export interface Notifier {
  /** Whether a NOTIFY_SOCKET was given (systemd is listening). */
  readonly enabled: boolean
  ready(status?: string): void
  reloading(): void
  stopping(): void
}

export function systemdNotifier(env: NodeJS.ProcessEnv, log: NotifyLog): Notifier {
  const path = env.NOTIFY_SOCKET
  // Children must not inherit it: they would be taken for us (sd_notify's unset_environment).
  delete env.NOTIFY_SOCKET
  if (path === undefined || path === '') {
    return { enabled: false, ready() {}, reloading() {}, stopping() {} }
  }
  const send = (message: string) => {
    let errno: number
    try {
      errno = loadPeerCred().sdNotify(path, message)
    } catch (err) {
      log('cannot notify systemd', { state: message, error: (err as Error).message })
      return
    }
    if (errno !== 0) log('cannot notify systemd', { state: message, socket: path, errno })
  }
  return {
    enabled: true,
    // No MAINPID=: systemd forked us, and the kernel tells it who sent the datagram.
    ready: (status) => send(`READY=1${status ? `\nSTATUS=${status}` : ''}`),
    reloading: () => {
      // MONOTONIC_USEC lets systemd (Type=notify-reload) tell this reload from an older one.
      const usec = process.hrtime.bigint() / 1000n
      send(`RELOADING=1\nMONOTONIC_USEC=${usec}`)
    },
    stopping: () => send('STOPPING=1'),
  }
}
