/**
 * What a failed sync means: how it is logged (server or TPM, with the operator's remedy) and which
 * server refusals say the agent identity is no longer accepted, or end this agent for good.
 */
import { SpiffeEdgeError } from '../errors.js'
import { NodeCallError } from '../transport/node-client.js'

/** Refusals that mean the server no longer accepts this agent identity. */
const IDENTITY_REFUSALS = ['banned', 'not_attested', 'stale_svid', 'bad_svid']

/** The server refused the call (as opposed to being unreachable or failing). */
export function isRefusal(err: unknown): err is NodeCallError {
  return err instanceof NodeCallError && err.code === 'ERR_SERVER_REFUSED'
}

/** A refusal saying the server no longer accepts this agent identity. */
export function isIdentityRefusal(err: unknown): err is NodeCallError {
  return isRefusal(err) && IDENTITY_REFUSALS.includes(err.reason)
}

/** The error that ends agent `id` after the server refused it for good. */
export function fatalRefusalError(err: NodeCallError, id: string): SpiffeEdgeError {
  const banned = err.reason === 'banned'
  return new SpiffeEdgeError(
    banned ? 'ERR_AGENT_BANNED' : 'ERR_AGENT_EVICTED',
    banned
      ? `the server banned this agent (${id}); stopping`
      : `the server no longer accepts this agent (${id}, ${err.reason}); stopping`,
    {
      cause: err,
      remedy: banned
        ? 'on the server, evict the agent (spiffe-edge server agent evict), then give it a new join token'
        : 'give the agent a new join token (spiffe-edge server token generate) and start it again',
    },
  )
}

/** The warning for a failed sync round, with what the operator can do about it. */
export function syncFailureLog(
  err: unknown,
  failures: number,
  offlineSeconds: number,
  firstExpiry: number | undefined,
): [string, Record<string, unknown>] {
  // A TPM that stopped answering (the agent key signs every request) is not the server's fault.
  const code = (err as { code?: unknown }).code
  const tpm = code === 'ERR_TPM'
  return [
    `sync failed (${tpm ? 'TPM' : 'server'}); serving cached identities`,
    {
      error: (err as Error).message,
      ...(typeof code === 'string' ? { code } : {}),
      failures,
      offline_seconds: offlineSeconds,
      ...(firstExpiry !== undefined
        ? { first_svid_expires: new Date(firstExpiry).toISOString() }
        : {}),
      remedy:
        tpm || code === 'ERR_AGENT_SVID_EXPIRED'
          ? (err as { remedy?: string }).remedy
          : 'check that the server is reachable; the agent retries with backoff',
    },
  ]
}
