/**
 * The TPM node attestor with the agent SVID key in a PKCS#11 token (`[plugins.NodeAttestor.tpm]`
 * with `[plugins.KeyManager.pkcs11]`): the TPM proves the machine (EK, AK, quote) and the token
 * holds the key. The AK cannot certify a key it does not hold, so the quote's qualifying data
 * commits to the token key's SPKI (attestors/tpm/protocol.ts, hsmKeyQualifyingData); the server
 * admits this only with allow_hsm_agent_key and says so in the `tpm:agent_key:pkcs11` selector.
 * The sealed SVID cache is then wrapped by the token too (one place for the agent's secrets).
 */
import { join } from 'node:path'
import {
  type TpmAgentAttestorOptions,
  type TpmAgentConfig,
  tpmAgentAttestor,
} from '../attestors/tpm/agent.js'
import { pkcs11Plugin } from '../keymanager/catalog.js'
import type { Key, KeyManager } from '../keymanager/types.js'
import { TpmContext } from '../tpm/context.js'
import type { AgentConfig } from './config.js'
import type { NodeIdentity } from './plugins.js'

/**
 * The key manager as the attestor needs it: the attestor proves whichever key the manager made
 * (or found) last, which is the one the CSR, and so the SVID, is for.
 */
export function trackCurrent<K extends Key>(keys: KeyManager) {
  let current: K | undefined
  const keyManager: KeyManager = {
    async generateKey(id, type) {
      current = (await keys.generateKey(id, type)) as K
      return current
    },
    async getKey(id) {
      const k = (await keys.getKey(id)) as K | undefined
      if (k) current ??= k
      return k
    },
    listKeys: () => keys.listKeys(),
    deleteKey: (id) => keys.deleteKey(id),
  }
  const early = keys.generateKeyEarly?.bind(keys)
  if (early) {
    // Passed through, or IdentityKeeper never overlaps the key file's write with attestation.
    keyManager.generateKeyEarly = async (id, type) => {
      const made = await early(id, type)
      current = made.key as K
      return made
    }
  }
  return {
    keyManager,
    current: (): K => {
      if (!current) throw new Error('no agent key yet')
      return current
    },
  }
}

/** The attestor options both key placements share. */
export function tpmOptions(
  config: AgentConfig,
  cfg: TpmAgentConfig,
  tpm: TpmContext,
): Omit<TpmAgentAttestorOptions, 'agentKey' | 'hsmAgentKey'> {
  return {
    tpm,
    dataDir: join(config.dataDir, 'tpm'),
    ekAlgorithm: cfg.ekAlgorithm,
    akAlgorithm: cfg.akAlgorithm,
    persistEk: cfg.persistEk,
    eventLogPath: cfg.eventLogPath,
  }
}

export async function tpmWithHsmKey(
  config: AgentConfig,
  cfg: TpmAgentConfig,
): Promise<NodeIdentity> {
  const keys = await pkcs11Plugin(config.keyManager)
  let tpm: TpmContext
  try {
    tpm = await TpmContext.open(cfg.tcti)
  } catch (err) {
    await keys.close()
    throw err
  }
  const tracked = trackCurrent<Key>(keys.keyManager)
  return {
    attestor: tpmAgentAttestor({ ...tpmOptions(config, cfg, tpm), hsmAgentKey: tracked.current }),
    keyManager: tracked.keyManager,
    tpmHealthy: () => tpm.health().healthy,
    ...(keys.healthy ? { keysHealthy: keys.healthy } : {}),
    ...(keys.cacheSealer ? { sealer: keys.cacheSealer } : {}),
    close: async () => {
      try {
        await tpm.close()
      } finally {
        await keys.close()
      }
    },
  }
}
