import { createHash } from 'node:crypto'
import { SpiffeEdgeError } from '../../errors.js'
import type { NodeAttestationResult, ServerNodeAttestor } from '../types.js'

export const JOIN_TOKEN = 'join_token'

/** What the server stores for a token: only its hash, so a database leak reveals no tokens. */
export function hashJoinToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex')
}

export interface JoinTokenStore {
  /** Atomically consumes an unexpired token; undefined when unknown, used or expired. */
  consumeJoinToken(tokenHash: string, now: number): Promise<{ spiffeId?: string } | undefined>
}

/**
 * The join_token node attestor, as SPIRE has it: the payload is the token, valid once, and the
 * agent ID is spiffe://<td>/spire/agent/join_token/<token>. No challenge, no re-attestation.
 */
export function joinTokenServerAttestor(store: JoinTokenStore): ServerNodeAttestor {
  return {
    kind: 'NodeAttestor',
    name: JOIN_TOKEN,
    async attest(payload, _challenge, ctx): Promise<NodeAttestationResult> {
      const token = Buffer.from(payload).toString('utf8')
      if (!/^[A-Za-z0-9._-]{16,128}$/.test(token)) {
        throw new SpiffeEdgeError('ERR_ATTESTATION_FAILED', 'join token is malformed', {
          remedy: 'pass the token exactly as `spiffe-edge server token generate` printed it',
          publicMessage: 'join token is malformed',
        })
      }
      const found = await store.consumeJoinToken(
        hashJoinToken(token),
        Math.floor(ctx.now.getTime() / 1000),
      )
      if (!found) {
        throw new SpiffeEdgeError(
          'ERR_ATTESTATION_FAILED',
          'join token is unknown, already used or expired',
          {
            remedy: 'generate a new token with `spiffe-edge server token generate`',
            publicMessage: 'join token is unknown, already used or expired',
          },
        )
      }
      return { agentPath: `/spire/agent/${JOIN_TOKEN}/${token}`, selectors: [], canReattest: false }
    },
  }
}
