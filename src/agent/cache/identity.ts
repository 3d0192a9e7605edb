/**
 * The agent's own identity: its SVID and key, restored from storage, obtained by node attestation
 * or renewed with RenewAgent, and when to rotate it. A key that did not become the identity is
 * deleted at once, and the previous identity's key once the new one is saved.
 */
import type { AgentNodeAttestor } from '../../attestors/types.js'
import type { Log } from '../../common/log.js'
import type { Key, KeyManager } from '../../keymanager/types.js'
import { createCsr } from '../../spiffe/csr.js'
import { readCert } from '../../spiffe/x509-cert.js'
import type { AgentAuth, AttestResult, NodeClient } from '../../transport/node-client.js'
import { required } from '../../transport/proto.js'
import type { AgentState, AgentStorage } from '../storage.js'
import { rotationTime } from './rotation.js'

export interface AgentIdentity {
  spiffeId: string
  chain: Uint8Array[]
  key: Key
  notBefore: number
  notAfter: number
  rotateAt: number
  reattestable: boolean
}

export function validity(der: Uint8Array): { notBefore: number; notAfter: number } {
  const c = readCert(der)
  return { notBefore: c.notBefore.getTime(), notAfter: c.notAfter.getTime() }
}

export { halfLife } from './rotation.js'

export interface IdentityDeps {
  readonly client: NodeClient
  readonly storage: AgentStorage
  readonly keyManager: KeyManager
  readonly attestor: AgentNodeAttestor
  readonly log: Log
  readonly now: () => number
  readonly random: () => number
  /** SPIRE's availability_target in ms (0: half-life). */
  readonly availabilityTargetMs: number
}

export class IdentityKeeper {
  current: AgentIdentity | undefined
  private readonly d: IdentityDeps
  private keyCounter = 0

  constructor(d: IdentityDeps) {
    this.d = d
  }

  /**
   * The agent SVID renews at its half-life, and in any case a skew margin before it expires (a
   * quarter of its life, at most 30 s), so an agent clock running behind the server's still renews
   * in time. With an availability target it renews while at least that much life is left
   * (rotation.ts). The sync loop wakes for it (nextDelay), whatever the sync interval.
   */
  private rotateAt(notBefore: number, notAfter: number): number {
    const now = this.d.now()
    const life = notAfter - Math.max(notBefore, now)
    const r = rotationTime(now, notBefore, notAfter, this.d.random, this.d.availabilityTargetMs)
    if (r.short) {
      this.d.log(
        'warn',
        "the agent SVID lifetime isn't long enough to guarantee the availability_target",
        {
          code: 'ERR_AVAILABILITY_TARGET_UNMET',
          ttl_seconds: Math.round(life / 1000),
          availability_target_seconds: Math.round(this.d.availabilityTargetMs / 1000),
          remedy:
            'raise the server agent_ttl to at least 2 x availability_target (or lower the target)',
        },
      )
    }
    return Math.min(r.at, notAfter - Math.min(30_000, life / 4))
  }

  /** Whether the agent SVID has run out (it cannot sign requests the server accepts). */
  expired(): boolean {
    const a = this.current
    return a !== undefined && a.notAfter <= this.d.now()
  }

  auth(): AgentAuth {
    const a = this.current
    if (!a) throw new Error('the agent has not attested')
    return { spiffeId: a.spiffeId, chain: a.chain, signer: a.key }
  }

  /**
   * Takes the saved identity when its key exists, expired or not: an expired one still names the
   * agent whose sealed SVID cache to serve, and whether it may re-attest (the manager never
   * signs a request with it).
   */
  async restore(state: AgentState): Promise<void> {
    if (!state.agentSvid || !state.agentSpiffeId || !state.agentKeyId) return
    const key = await this.d.keyManager.getKey(state.agentKeyId)
    const leaf = state.agentSvid[0]
    if (!key || !leaf) return
    const v = validity(leaf)
    this.current = {
      spiffeId: state.agentSpiffeId,
      chain: state.agentSvid,
      key,
      ...v,
      rotateAt: this.rotateAt(v.notBefore, v.notAfter),
      reattestable: state.reattestable ?? false,
    }
    this.d.log(v.notAfter <= this.d.now() ? 'warn' : 'info', 'restored agent identity', {
      agent: state.agentSpiffeId,
      expires: new Date(v.notAfter).toISOString(),
      expired: v.notAfter <= this.d.now(),
    })
  }

  /**
   * A new agent key; `stored` settles once it is kept durably (see generateKeyEarly). `early`
   * false: stored before it is returned (single-use evidence must not be spent on a key whose
   * file then fails to write).
   */
  private async newKey(early = true): Promise<{ key: Key; stored: Promise<void> }> {
    const id = `agent-svid-${Date.now()}-${++this.keyCounter}`
    const km = this.d.keyManager
    if (early && km.generateKeyEarly) return km.generateKeyEarly(id, 'ec-p256')
    return { key: await km.generateKey(id, 'ec-p256'), stored: Promise.resolve() }
  }

  /**
   * A failed attempt's fresh key is nobody's (the working identity's key has another id): remove
   * it, once its write has landed (a rename after the delete would bring it back).
   */
  private async dropKey(key: Key, err: unknown, stored?: Promise<void>): Promise<never> {
    await stored?.catch(() => undefined)
    await this.d.keyManager.deleteKey(key.id).catch(() => undefined)
    throw err
  }

  /**
   * Node attestation: a new key, evidence, and the agent SVID (saved with the bundle it came with).
   * Returns the result and the identity it replaced.
   */
  async attest(): Promise<{ r: AttestResult; old: AgentIdentity | undefined }> {
    // The connection is set up while the key is made (TPM time the event loop only waits).
    this.d.client.warmUp?.()
    // The key file is written while the attestation runs; the SVID is kept only once it is.
    const { key, stored } = await this.newKey(!this.d.attestor.singleUse)
    const r = await this.d.client
      .attestAgent(this.d.attestor, key)
      .catch((err) => this.dropKey(key, err, stored))
    await stored.catch((err) => this.dropKey(key, err))
    const old = this.current
    const v = validity(r.svid.certChain[0]!)
    this.current = {
      spiffeId: r.svid.spiffeId,
      chain: r.svid.certChain,
      key,
      ...v,
      rotateAt: this.rotateAt(v.notBefore, v.notAfter),
      reattestable: r.reattestable,
    }
    this.d.storage.save({
      agentSvid: r.svid.certChain,
      agentSpiffeId: r.svid.spiffeId,
      reattestable: r.reattestable,
      bundle: r.bundle.toSpiffeJson(),
      agentKeyId: key.id,
    })
    if (old && old.key.id !== key.id) await this.d.keyManager.deleteKey(old.key.id)
    return { r, old }
  }

  /** RenewAgent: a new key and SVID for the same identity. */
  async renew(): Promise<void> {
    const a = this.current!
    const { key, stored } = await this.newKey()
    const r = await createCsr(key)
      .then((csr) => this.d.client.call('RenewAgent', { csr }, this.auth()))
      .catch((err) => this.dropKey(key, err, stored))
    await stored.catch((err) => this.dropKey(key, err))
    const svid = required(r.svid, 'RenewAgentResponse.svid')
    const v = validity(svid.certChain[0]!)
    const old = a.key
    this.current = {
      ...a,
      chain: svid.certChain,
      key,
      ...v,
      rotateAt: this.rotateAt(v.notBefore, v.notAfter),
    }
    this.d.storage.save({ agentSvid: svid.certChain, agentKeyId: key.id })
    await this.d.keyManager.deleteKey(old.id)
    this.d.log('info', 'agent SVID renewed', {
      agent: a.spiffeId,
      expires: new Date(v.notAfter).toISOString(),
    })
  }
}
