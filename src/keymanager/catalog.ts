/**
 * Key managers as plugins: each entry turns its `[plugins.KeyManager.<name>]` table into a ready
 * key manager. The server and the agent list the entries they offer (server/plugins.ts,
 * agent/plugins.ts); a config naming one they do not have is refused with the list.
 */
import { resolve } from 'node:path'
import { ConfigError, ConfigReader, type KeyManagerConfig } from '../common/config.js'
import { DiskKeyManager } from './disk.js'
import { MemoryKeyManager } from './memory.js'
import type { CacheSealer } from './sealer.js'
import type { KeyManager } from './types.js'

export interface KeyManagerPlugin {
  readonly name: string
  readonly keyManager: KeyManager
  /** Set for the disk manager: the server's start-up checks and `--reset` work on it. */
  readonly directory?: string
  /** Whether keys survive a restart (memory: no). */
  readonly persistent: boolean
  /** False while the keys cannot be reached (a token gone); absent: always reachable. */
  readonly healthy?: () => boolean
  /** What seals the agent's SVID cache with this key manager's hardware (PKCS#11: its token). */
  readonly cacheSealer?: CacheSealer
  close(): Promise<void> | void
}

export type KeyManagerFactory = (cfg: KeyManagerConfig) => Promise<KeyManagerPlugin>

const noSettings = (cfg: KeyManagerConfig): void => {
  if (Object.keys(cfg.data).length > 0)
    throw new ConfigError(`plugins.KeyManager.${cfg.name}`, ['takes no settings'])
}

export const diskPlugin: KeyManagerFactory = async (cfg) => {
  const r = new ConfigReader(cfg.configDir)
  r.known(cfg.data, ['directory'], 'plugins.KeyManager.disk')
  const fallback = resolve(cfg.dataDir, 'keys')
  const directory = r.path(cfg.data, 'directory', 'plugins.KeyManager.disk', fallback)!
  r.done('plugins.KeyManager.disk')
  return {
    name: 'disk',
    keyManager: new DiskKeyManager(directory),
    directory,
    persistent: true,
    close: () => undefined,
  }
}

export const memoryPlugin: KeyManagerFactory = async (cfg) => {
  noSettings(cfg)
  return {
    name: 'memory',
    keyManager: new MemoryKeyManager(),
    persistent: false,
    close: () => undefined,
  }
}

export const pkcs11Plugin: KeyManagerFactory = async (cfg) => {
  // Loaded only when configured: pkcs11js and the token code are no part of other starts.
  const [{ parsePkcs11Config }, { Pkcs11KeyManager }, { Pkcs11Sealer }] = await Promise.all([
    import('./pkcs11/config.js'),
    import('./pkcs11/manager.js'),
    import('./pkcs11-sealer.js'),
  ])
  const km = await Pkcs11KeyManager.open(parsePkcs11Config(cfg.data, cfg.configDir))
  return {
    name: 'pkcs11',
    keyManager: km,
    persistent: true,
    healthy: () => km.healthy(),
    cacheSealer: new Pkcs11Sealer(km),
    close: () => km.close(),
  }
}

/** Builds the configured key manager from `catalog`; an unknown name is refused listing it. */
export function buildKeyManager(
  catalog: ReadonlyMap<string, KeyManagerFactory>,
  cfg: KeyManagerConfig,
  who: 'server' | 'agent',
): Promise<KeyManagerPlugin> {
  const factory = catalog.get(cfg.name)
  if (!factory) {
    return Promise.reject(
      new ConfigError('plugins.KeyManager', [
        `${cfg.name}: unknown key manager (this ${who} has: ${[...catalog.keys()].join(', ')})`,
      ]),
    )
  }
  return factory(cfg)
}
