/**
 * Listening for the small unauthenticated HTTP endpoints (health checks, metrics): a bind failure
 * is a coded error that names the config table to fix, and close() also drops idle keep-alive
 * connections so a stop never waits on a scraper.
 */
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type ErrorCode, SpiffeEdgeError } from '../errors.js'

export interface HttpListener {
  readonly port: number
  close(): Promise<void>
}

export async function listenHttp(
  server: Server,
  at: { host: string; port: number },
  fail: { code: ErrorCode; table: string; portKey: string; addressKey: string },
): Promise<HttpListener> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new SpiffeEdgeError(
          fail.code,
          `${fail.table} cannot listen on ${at.host}:${at.port}: ${err.message}`,
          {
            remedy:
              err.code === 'EADDRINUSE'
                ? `another process holds that port: pick another ${fail.portKey}`
                : `check ${fail.addressKey} and ${fail.portKey}`,
            cause: err,
          },
        ),
      ),
    )
    server.listen(at.port, at.host, () => resolve())
  })
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
