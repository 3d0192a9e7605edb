/**
 * `keys list|test --config FILE`: what the key manager a server or agent config names holds, and
 * a test signature, for an operator bringing up a new token (PIN, label, module path) before the
 * first start. `test` makes a throwaway key, signs, verifies with the public key read back and
 * destroys it; `--key ID` signs with an existing key instead and writes nothing.
 */
import { createHash, randomBytes, verify } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { parseAgentConfig } from '../agent/config.js'
import { KEY_MANAGERS as AGENT_KEY_MANAGERS } from '../agent/plugins.js'
import { ConfigError } from '../common/config.js'
import { UsageError } from '../errors.js'
import { buildKeyManager, type KeyManagerPlugin } from '../keymanager/catalog.js'
import { isKeyType, type Key, KeyManagerError } from '../keymanager/types.js'
import { parseServerConfig } from '../server/config.js'
import { KEY_MANAGERS as SERVER_KEY_MANAGERS } from '../server/plugins.js'
import { type Group, type Leaf, type OptionValues, requireString } from './command.js'

const CONFIG = {
  type: 'string',
  description: 'server or agent config (TOML)',
  valueName: 'FILE',
} as const
const JSON_OUT = { type: 'boolean', description: 'print JSON instead of text' } as const

/** The key manager of a server config (`[server]`) or an agent config (`[agent]`). */
async function openFromConfig(file: string): Promise<KeyManagerPlugin & { role: string }> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`])
  }
  if (/^\s*\[server\]/m.test(text)) {
    const c = parseServerConfig(text, file)
    return {
      ...(await buildKeyManager(SERVER_KEY_MANAGERS, c.keyManager, 'server')),
      role: 'server',
    }
  }
  if (/^\s*\[agent\]/m.test(text)) {
    const c = parseAgentConfig(text, file)
    if (c.nodeAttestor.name === 'tpm') {
      // The TPM attestor certifies the SVID key, so it lives in the TPM whatever KeyManager says.
      throw new ConfigError(file, [
        'plugins.NodeAttestor.tpm: the agent SVID key lives in the TPM, not in plugins.KeyManager; inspect the TPM with `spiffe-edge tpm info`',
      ])
    }
    return { ...(await buildKeyManager(AGENT_KEY_MANAGERS, c.keyManager, 'agent')), role: 'agent' }
  }
  throw new ConfigError(file, ['neither a [server] nor an [agent] config'])
}

function describe(k: Key): Record<string, string> {
  const spki = k.publicKey.export({ type: 'spki', format: 'der' })
  const extra = k as Key & { label?: string; ckaId?: string }
  return {
    id: k.id,
    key_type: k.keyType,
    public_key_sha256: createHash('sha256').update(spki).digest('hex'),
    ...(extra.label ? { label: extra.label } : {}),
    ...(extra.ckaId ? { cka_id: extra.ckaId } : {}),
  }
}

async function withKeys<T>(
  values: OptionValues,
  fn: (p: KeyManagerPlugin & { role: string }) => Promise<T>,
): Promise<T> {
  const p = await openFromConfig(requireString(values, 'config'))
  try {
    return await fn(p)
  } finally {
    await p.close()
  }
}

const listCommand: Leaf = {
  kind: 'command',
  name: 'list',
  summary: 'the keys the configured key manager holds',
  options: { config: CONFIG, json: JSON_OUT },
  run: (values, io) =>
    withKeys(values, async (p) => {
      const keys = (await p.keyManager.listKeys()).map(describe)
      if (values.json) {
        io.out(`${JSON.stringify({ role: p.role, key_manager: p.name, keys })}\n`)
      } else {
        io.out(`${p.role} key manager ${p.name}: ${keys.length} key(s)\n`)
        for (const k of keys) {
          const where = k.label ? `  label ${k.label}  cka_id ${k.cka_id}` : ''
          io.out(`  ${k.id}  ${k.key_type}  sha256:${k.public_key_sha256}${where}\n`)
        }
      }
      return 0
    }),
}

const testCommand: Leaf = {
  kind: 'command',
  name: 'test',
  summary: 'sign with a throwaway key (or --key ID) and verify the signature',
  details:
    'Without --key a key `keys-test-<random>` is generated, used and destroyed: it proves the PIN,\n' +
    'the token and key generation. With --key nothing is written.',
  options: {
    config: CONFIG,
    key: { type: 'string', description: 'sign with this existing key', valueName: 'ID' },
    type: {
      type: 'string',
      description: 'key type of the throwaway key',
      default: 'ec-p256',
      valueName: 'TYPE',
    },
    json: JSON_OUT,
  },
  run: (values, io) =>
    withKeys(values, async (p) => {
      const type = String(values.type ?? 'ec-p256')
      if (!isKeyType(type))
        throw new UsageError(`--type ${type}: use ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096`)
      const existing = typeof values.key === 'string' ? values.key : undefined
      const id = existing ?? `keys-test-${randomBytes(4).toString('hex')}`
      let key: Key | undefined
      if (existing) {
        key = await p.keyManager.getKey(existing)
        if (!key)
          throw new KeyManagerError(
            `no key ${existing} in key manager ${p.name}`,
            'run `spiffe-edge keys list --config FILE`',
          )
      }
      const t0 = performance.now()
      key ??= await p.keyManager.generateKey(id, type)
      const t1 = performance.now()
      try {
        const data = randomBytes(64)
        const sig = await key.sign(data)
        const t2 = performance.now()
        const hash = key.keyType === 'ec-p384' ? 'sha384' : 'sha256'
        const ok = verify(hash, data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig)
        if (!ok) {
          throw new KeyManagerError(
            `key ${id} made a signature that does not verify`,
            'the key manager or token is broken: do not use it',
          )
        }
        const report = {
          role: p.role,
          key_manager: p.name,
          ...describe(key),
          generated: !existing,
          generate_ms: existing ? 0 : Math.round(t1 - t0),
          sign_ms: Math.round((t2 - t1) * 10) / 10,
          verified: true,
        }
        if (values.json) io.out(`${JSON.stringify(report)}\n`)
        else
          io.out(
            `${p.role} key manager ${p.name}: ${existing ? 'signed with' : 'generated'} ${id} (${key.keyType})` +
              `${existing ? '' : ` in ${report.generate_ms} ms`}, signed in ${report.sign_ms} ms, signature verified\n`,
          )
        return 0
      } finally {
        if (!existing) await p.keyManager.deleteKey(id)
      }
    }),
}

export const keysGroup: Group = {
  kind: 'group',
  name: 'keys',
  summary: 'the configured key manager: list its keys, test a signature',
  children: [listCommand, testCommand],
}
