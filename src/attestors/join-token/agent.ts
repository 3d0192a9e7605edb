import { SpiffeEdgeError } from '../../errors.js'
import type { AgentNodeAttestor } from '../types.js'
import { JOIN_TOKEN } from './server.js'

/** The agent half: sends the token; the server never challenges. */
export function joinTokenAgentAttestor(token: string): AgentNodeAttestor {
  return {
    kind: 'NodeAttestor',
    name: JOIN_TOKEN,
    singleUse: true,
    async payload() {
      return new Uint8Array(Buffer.from(token, 'utf8'))
    },
    async respond() {
      throw new SpiffeEdgeError(
        'ERR_ATTESTATION_FAILED',
        'the server challenged a join token attestation',
        {
          remedy: 'the server is not a spiffe-edge server, or is misconfigured',
        },
      )
    },
  }
}
