/**
 * What the manager does when its agent identity is missing, expired or refused: attest (in place
 * for a re-attestable attestor, once more with the configured join token otherwise) and remember
 * when only a new join token can help.
 */
import type { AgentNodeAttestor } from '../attestors/types.js'
import type { Log } from '../common/log.js'
import type { SpiffeEdgeError } from '../errors.js'
import type { BundleState } from './cache/bundle.js'
import type { EntrySync } from './cache/entries.js'
import type { IdentityKeeper } from './cache/identity.js'
import { svidExpiredError } from './cache/offline.js'
import { isRefusal } from './sync-errors.js'

export interface IdentityRecoveryDeps {
  readonly identity: IdentityKeeper
  readonly bundle: BundleState
  readonly entries: EntrySync
  readonly attestor: AgentNodeAttestor
  readonly log: Log
}

export class IdentityRecovery {
  /** Set once the server refused the join token of an expired agent: do not ask again. */
  needsNewToken: SpiffeEdgeError | undefined
  private readonly d: IdentityRecoveryDeps

  constructor(d: IdentityRecoveryDeps) {
    this.d = d
  }

  /**
   * No usable agent SVID (none yet, or it expired during an outage): attest. A re-attestable
   * attestor (TPM) does it in place; a join-token agent tries its configured token once (it may
   * be a new one) and, once the server refuses it, says plainly it needs a new token.
   */
  async recover(): Promise<void> {
    const a = this.d.identity.current
    if (!a) return this.attest()
    if (this.needsNewToken) throw this.needsNewToken
    if (!a.reattestable) {
      try {
        await this.attest()
      } catch (err) {
        // Refused (the token is spent), or no token configured at all: only a new one helps.
        const noToken = (err as { code?: unknown }).code === 'ERR_JOIN_TOKEN_MISSING'
        if (noToken || isRefusal(err)) {
          this.needsNewToken = svidExpiredError(a.spiffeId, err)
          this.d.log('error', this.needsNewToken.message, {
            code: this.needsNewToken.code,
            remedy: this.needsNewToken.remedy,
          })
          throw this.needsNewToken
        }
        throw err
      }
      return
    }
    this.d.log('warn', 'the agent SVID expired while the server was unreachable; attesting again', {
      agent: a.spiffeId,
    })
    await this.attest()
  }

  /** Node attestation; a different identity than before starts its entries afresh. */
  async attest(): Promise<void> {
    const { r, old } = await this.d.identity.attest()
    this.d.bundle.current = r.bundle
    if (old && old.spiffeId !== r.svid.spiffeId) this.d.entries.clear()
    this.d.log('info', 'node attested', { agent: r.svid.spiffeId, attestor: this.d.attestor.name })
    this.d.bundle.notify()
  }
}
