/**
 * Loader for the peercred addon (build/Release/peercred.node): SO_PEERCRED + SO_PEERGROUPS with no
 * tpm2-tss, so the server's admin API and the agent's Workload API can check callers on a machine
 * without the TPM stack. Lazy, cached, and a failure is ERR_PEERCRED_UNAVAILABLE: callers refuse to
 * start rather than serve unchecked.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import type { Socket } from 'node:net'
import { join, resolve } from 'node:path'
import { packageRoot } from '../common/package-root.js'
import { SpiffeEdgeError } from '../errors.js'
import type { PeerCredentials } from './types.js'

/** ABI 3 added trimHeap; 2 (no trimHeap) still loads, and then nothing is trimmed. */
const ACCEPTED_ABI: readonly number[] = [2, 3]

export interface PeerCredBinding {
  readonly abiVersion: number
  /** getsockopt(SO_PEERCRED) (+ SO_PEERGROUPS when the kernel has it) on a connected Unix socket. */
  peerCred(fd: number): PeerCredentials
  /** One datagram to an AF_UNIX socket ('@name': abstract); 0 or the errno. For sd_notify. */
  sdNotify(path: string, message: string): number
  /** glibc's malloc_trim(0): free pages back to the kernel (false: nothing released, or not glibc). */
  readonly trimHeap?: () => boolean
}

export interface LoadPeerCredOptions {
  /** An explicit path to peercred.node (also SPIFFE_EDGE_PEERCRED in the environment). */
  readonly path?: string
  readonly root?: string
}

/** Kernel credentials could not be read at all: the addon is missing or broken. */
export class PeerCredUnavailableError extends SpiffeEdgeError {
  readonly searched: readonly string[]
  constructor(searched: readonly string[], cause: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause)
    super(
      'ERR_PEERCRED_UNAVAILABLE',
      `the peercred addon could not be loaded (searched: ${searched.join(', ')}): ${why}; callers cannot be checked`,
      {
        cause,
        remedy:
          'build the addons with `npm run build:native` (peercred needs only a C++ compiler, not tpm2-tss), or point SPIFFE_EDGE_PEERCRED at a built peercred.node',
      },
    )
    this.searched = searched
  }
}

/** getsockopt failed on a descriptor (not a socket, closed): the addon's ERR_PEERCRED. */
export class PeerCredError extends SpiffeEdgeError {
  /** The errno getsockopt set, when the addon reported one. */
  readonly errno: number | undefined
  constructor(message: string, errno: number | undefined, cause?: unknown) {
    super('ERR_PEERCRED', message, {
      cause,
      remedy:
        'kernel credentials are read from a connected Unix socket; check that the caller connected over the socket and is still connected',
    })
    this.errno = errno
  }
}

/**
 * Every `code` native/src/peercred.cc sets, and what it becomes (the addon's argument check is a
 * TypeError, mapped below). test/unit/native-errors.test.ts checks this against the C++.
 */
export const PEERCRED_ERROR_CODES: readonly string[] = ['ERR_PEERCRED']

/** The addon's errors in our hierarchy; anything else passes through. */
export function fromPeerCredNative(err: unknown): Error {
  if (err instanceof SpiffeEdgeError) return err
  const e = err as { code?: unknown; errno?: unknown; message?: unknown }
  if (e && typeof e === 'object' && e.code === 'ERR_PEERCRED') {
    const errno = typeof e.errno === 'number' ? e.errno : undefined
    return new PeerCredError(String(e.message), errno, err)
  }
  // Its argument check (`peerCred(fd) takes a file descriptor`): the same remedy applies.
  if (err instanceof TypeError) return new PeerCredError(err.message, undefined, err)
  return err instanceof Error ? err : new Error(String(err))
}

/** The raw binding, with its throws mapped (the addon's own errors carry no remedy). */
function mapped(raw: PeerCredBinding): PeerCredBinding {
  return {
    abiVersion: raw.abiVersion,
    sdNotify: (path, message) => raw.sdNotify(path, message),
    ...(raw.trimHeap ? { trimHeap: () => raw.trimHeap!() } : {}),
    peerCred(fd: number): PeerCredentials {
      try {
        return raw.peerCred(fd)
      } catch (err) {
        throw fromPeerCredNative(err)
      }
    },
  }
}

let cached: PeerCredBinding | undefined

export function peerCredCandidates(options: LoadPeerCredOptions = {}): string[] {
  const explicit = options.path ?? process.env.SPIFFE_EDGE_PEERCRED
  if (explicit) return [resolve(explicit)]
  const root = options.root ?? packageRoot()
  return [
    join(root, 'build', 'Release', 'peercred.node'),
    join(root, 'build', 'Debug', 'peercred.node'),
  ]
}

export function loadPeerCred(options: LoadPeerCredOptions = {}): PeerCredBinding {
  const useCache =
    options.path === undefined && options.root === undefined && !process.env.SPIFFE_EDGE_PEERCRED
  if (useCache && cached) return cached
  const searched = peerCredCandidates(options)
  const require = createRequire(import.meta.url)
  let lastError: unknown = new Error('no build found; the addon has not been built')
  for (const candidate of searched) {
    if (!existsSync(candidate)) continue
    try {
      const binding = require(candidate) as PeerCredBinding
      if (!ACCEPTED_ABI.includes(binding.abiVersion) || typeof binding.peerCred !== 'function') {
        lastError = new Error(
          `${candidate} has ABI ${binding.abiVersion}, expected one of ${ACCEPTED_ABI.join(', ')}`,
        )
        continue
      }
      const wrapped = mapped(binding)
      if (useCache) cached = wrapped
      return wrapped
    } catch (err) {
      lastError = err
    }
  }
  throw new PeerCredUnavailableError(searched, lastError)
}

/** The descriptor under a net.Socket (libuv keeps it at _handle.fd). */
export function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd
  if (typeof fd !== 'number' || fd < 0) {
    throw new SpiffeEdgeError('ERR_PEERCRED', 'the connection has no file descriptor', {
      remedy: 'a Unix socket connection is needed to read kernel credentials',
    })
  }
  return fd
}

/** A socket → credentials function over the addon; loads it now, so a start fails, not a call. */
export function socketPeerCred(options: LoadPeerCredOptions = {}): (s: Socket) => PeerCredentials {
  const binding = loadPeerCred(options)
  return (s) => binding.peerCred(socketFd(s))
}
