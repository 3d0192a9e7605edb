/**
 * Join tokens and their node aliases (SPIRE's `token generate --spiffeID`), without a usable token
 * at rest: the alias entry is written when the token is consumed, not when it is generated.
 */
import { JOIN_TOKEN, joinTokenServerAttestor } from '../attestors/join-token/server.js'
import type { ServerNodeAttestor } from '../attestors/types.js'
import type { Log } from '../common/log.js'
import { SpiffeEdgeError } from '../errors.js'
import type { TrustDomain } from '../spiffe/id.js'
import type { Datastore } from './datastore/types.js'

/**
 * The join_token attestor, plus SPIRE's node alias for tokens generated with a SPIFFE ID: an entry
 * giving the agent (by its ID, which holds the now spent token) that SPIFFE ID, so workload
 * entries can be parented to a stable name. SPIRE writes that entry when the token is generated,
 * which puts the live token in the database; here it is written when the token is consumed, in
 * the same datastore transaction that spends it.
 */
export function aliasingJoinTokenAttestor(datastore: Datastore): ServerNodeAttestor {
  const plain = joinTokenServerAttestor(datastore)
  return {
    ...plain,
    async attest(payload, challenge, ctx) {
      // The agent ID is the token's, known before it is consumed, so the datastore can spend the
      // token and write the alias in one transaction (a crash between the two loses neither).
      const agentId = `spiffe://${ctx.trustDomain}/spire/agent/${JOIN_TOKEN}/${Buffer.from(payload).toString('utf8')}`
      // The plain attestor checks the token's shape before it reaches the store.
      const inner = joinTokenServerAttestor({
        consumeJoinToken: (hash, now) => datastore.consumeJoinTokenForAgent(hash, now, agentId),
      })
      const result = await inner.attest(payload, challenge, ctx)
      if (`spiffe://${ctx.trustDomain}${result.agentPath}` !== agentId) {
        // Fail closed if the attestor's ID scheme ever drifts from the one the alias names.
        throw new SpiffeEdgeError(
          'ERR_ATTESTATION_FAILED',
          'join token alias was written for another agent ID',
          { remedy: 'keep join-token-alias.ts in step with the join_token attestor agent path' },
        )
      }
      return result
    },
  }
}

/**
 * Earlier versions wrote a token's alias entry at `token generate`, parented to the agent ID
 * that holds the live token. For agents that have not attested yet, drop those entries: the
 * token's row keeps the alias ID, and the entry is written again when the token is used.
 */
export async function scrubLiveTokenAliases(
  ds: Datastore,
  td: TrustDomain,
  log: Log,
): Promise<void> {
  const prefix = `spiffe://${td.name}/spire/agent/${JOIN_TOKEN}/`
  let removed = 0
  for (const e of await ds.listEntries()) {
    const s = e.selectors[0]
    const aliasShape =
      e.parentId.startsWith(prefix) &&
      e.selectors.length === 1 &&
      s?.type === 'spiffe_id' &&
      s.value === e.parentId
    if (!aliasShape || (await ds.getAttestedNode(e.parentId))) continue
    await ds.deleteEntry(e.id)
    removed++
  }
  if (removed > 0) log('warn', 'removed alias entries that held unused join tokens', { removed })
}
