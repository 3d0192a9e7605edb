import { request } from 'node:http'
import { type ErrorCode, SpiffeEdgeError } from '../errors.js'

/** Calls the admin API on its Unix socket; a server-side error comes back as the same coded error. */
export function adminCall(
  socketPath: string,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<Record<string, unknown>> {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
          : {},
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          let json: Record<string, unknown>
          try {
            json = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>
          } catch {
            return reject(
              new SpiffeEdgeError('ERR_ADMIN_PROTOCOL', 'admin API answered with non-JSON', {
                remedy: 'is --admin-socket a spiffe-edge server?',
              }),
            )
          }
          const err = json.error as { code?: string; message?: string; remedy?: string } | undefined
          if (err) {
            return reject(
              new SpiffeEdgeError(
                (err.code ?? 'ERR_ADMIN_PROTOCOL') as ErrorCode,
                err.message ?? 'admin call failed',
                {
                  remedy: err.remedy ?? 'see the server log',
                },
              ),
            )
          }
          resolve(json)
        })
      },
    )
    req.on('timeout', () => req.destroy(new Error('admin API did not answer within 30s')))
    req.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        new SpiffeEdgeError(
          'ERR_SERVER_UNREACHABLE',
          `cannot reach the admin socket ${socketPath}: ${e.message}`,
          {
            cause: e,
            remedy: 'start the server (spiffe-edge server run) or pass the right --admin-socket',
          },
        ),
      ),
    )
    if (payload) req.write(payload)
    req.end()
  })
}
