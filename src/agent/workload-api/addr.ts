/**
 * Workload API endpoint addresses (SPIFFE Workload Endpoint §4, SPIFFE_ENDPOINT_SOCKET):
 * `unix:///abs/path` (or `unix:/abs/path`), `tcp://<ip>:<port>`; a bare absolute path is taken
 * as a unix socket for convenience. Parsed strictly: the spec forbids a unix authority, which
 * go-spiffe tolerates.
 */
import { isIP } from 'node:net'
import { WorkloadEndpointError } from './errors.js'

export const SOCKET_ENV = 'SPIFFE_ENDPOINT_SOCKET'

export type EndpointAddress =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }

const REMEDY = 'use unix:///path/to/socket or tcp://<ip>:<port>'

function bad(msg: string): never {
  throw new WorkloadEndpointError(`workload endpoint socket URI ${msg}`, REMEDY)
}

export function parseEndpointAddress(addr: string): EndpointAddress {
  for (let i = 0; i < addr.length; i++) {
    const c = addr.charCodeAt(i)
    if (c < 0x20 || c === 0x7f) bad('contains a control character')
  }
  if (addr.startsWith('/')) return { kind: 'unix', path: addr }
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):(.*)$/s.exec(addr)
  const scheme = m?.[1]?.toLowerCase()
  if (m === null || (scheme !== 'unix' && scheme !== 'tcp'))
    bad('must have a "tcp" or "unix" scheme')
  const rest = m[2] ?? ''
  if (!rest.startsWith('/')) bad(`must not be opaque (${scheme} socket URI)`)
  let u: URL
  try {
    u = new URL(addr)
  } catch (err) {
    throw new WorkloadEndpointError(
      `workload endpoint socket URI is not a URI: ${addr}`,
      REMEDY,
      err,
    )
  }
  if (u.username !== '' || u.password !== '') bad('must not include user info')
  if (u.search !== '' || addr.includes('?')) bad('must not include query values')
  if (u.hash !== '' || addr.includes('#')) bad('must not include a fragment')
  if (scheme === 'unix') {
    if (u.host !== '') bad('must not include an authority (use unix:///absolute/path)')
    if (u.pathname === '' || u.pathname === '/') bad('must include a path')
    return { kind: 'unix', path: decodeURIComponent(u.pathname) }
  }
  if (u.host === '') bad('must include a host')
  if (u.pathname !== '' && u.pathname !== '/') bad('must not include a path')
  if (u.pathname === '/' && !/^tcp:\/\/[^/]*$/i.test(addr)) bad('must not include a path')
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1')
  if (isIP(host) === 0) bad('host component must be an IP:port')
  if (u.port === '') bad('host component must include a port')
  return { kind: 'tcp', host, port: Number(u.port) }
}

/** The grpc-js target for an address. */
export function grpcTarget(a: EndpointAddress): string {
  if (a.kind === 'unix') return `unix://${a.path}`
  return isIP(a.host) === 6 ? `ipv6:[${a.host}]:${a.port}` : `ipv4:${a.host}:${a.port}`
}
