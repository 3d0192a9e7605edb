/**
 * The server's plugin catalog: each kind maps a config name to a factory, so adding an attestor
 * (cloud, next) is one line here, and a config naming an unknown plugin is told what exists.
 */
import { JOIN_TOKEN } from '../attestors/join-token/server.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../attestors/tpm/server.js'
import type { ServerNodeAttestor } from '../attestors/types.js'
import { ConfigError, type Table } from '../common/config.js'
import type { Log } from '../common/log.js'
import {
  diskPlugin,
  type KeyManagerFactory,
  memoryPlugin,
  pkcs11Plugin,
} from '../keymanager/catalog.js'
import { CLOUD_NODE_ATTESTORS } from './cloud-plugins.js'
import type { Datastore } from './datastore/types.js'
import { aliasingJoinTokenAttestor } from './join-token-alias.js'

/** What a server plugin may be built from: its own config table and the server's parts. */
export interface ServerPluginContext {
  readonly datastore: Datastore
  /** Relative paths in plugin config resolve against the config file's directory. */
  readonly configDir: string
  readonly log: Log
}

type NodeAttestorFactory = (data: Table, ctx: ServerPluginContext) => ServerNodeAttestor

export const NODE_ATTESTORS: ReadonlyMap<string, NodeAttestorFactory> = new Map([
  [
    JOIN_TOKEN,
    (data: Table, ctx: ServerPluginContext) => {
      if (Object.keys(data).length > 0)
        throw new ConfigError('plugins.NodeAttestor.join_token', ['takes no settings'])
      return aliasingJoinTokenAttestor(ctx.datastore)
    },
  ],
  [
    'tpm',
    (data: Table, ctx: ServerPluginContext) =>
      tpmServerAttestor(parseTpmServerConfig(data, ctx.configDir), ctx.log),
  ],
  ...CLOUD_NODE_ATTESTORS,
])

/** Builds every configured node attestor; unknown names are refused together, listing the catalog. */
export function buildNodeAttestors(
  configured: ReadonlyMap<string, Table>,
  ctx: ServerPluginContext,
): Map<string, ServerNodeAttestor> {
  const unknown = [...configured.keys()].filter((n) => !NODE_ATTESTORS.has(n))
  if (unknown.length > 0) {
    throw new ConfigError(
      'plugins.NodeAttestor',
      unknown.map(
        (n) =>
          `${n}: unknown node attestor (this server has: ${[...NODE_ATTESTORS.keys()].join(', ')})`,
      ),
    )
  }
  const out = new Map<string, ServerNodeAttestor>()
  for (const [name, data] of configured) out.set(name, NODE_ATTESTORS.get(name)!(data, ctx))
  return out
}

/** Where the CA and JWT signing keys live: `[plugins.KeyManager.<name>]`. */
export const KEY_MANAGERS: ReadonlyMap<string, KeyManagerFactory> = new Map([
  ['disk', diskPlugin],
  ['memory', memoryPlugin],
  ['pkcs11', pkcs11Plugin],
])
