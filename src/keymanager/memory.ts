import { generateKeyPair, type KeyObject } from 'node:crypto'
import {
  generateOptions,
  isKeyType,
  type Key,
  type KeyManager,
  KeyManagerError,
  type KeyType,
  signWithPrivateKey,
  validateKeyId,
} from './types.js'

/** Generates a software key pair of the given type off the event loop. */
export function generateSoftwareKeyPair(
  keyType: KeyType,
): Promise<{ privateKey: KeyObject; publicKey: KeyObject }> {
  if (!isKeyType(keyType)) {
    return Promise.reject(
      new KeyManagerError(
        `unsupported key type ${JSON.stringify(keyType)}`,
        'use ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096',
      ),
    )
  }
  const opts = generateOptions(keyType)
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, publicKey: KeyObject, privateKey: KeyObject): void => {
      if (err) reject(err)
      else resolve({ privateKey, publicKey })
    }
    if (opts.type === 'ec') generateKeyPair('ec', { namedCurve: opts.namedCurve }, done)
    else generateKeyPair('rsa', { modulusLength: opts.modulusLength, publicExponent: 65537 }, done)
  })
}

/** A Key backed by an in-process private key; the private key is never exposed. */
export function softwareKey(
  id: string,
  keyType: KeyType,
  privateKey: KeyObject,
  publicKey: KeyObject,
): Key {
  return Object.freeze({
    id,
    keyType,
    publicKey,
    sign: (data: Uint8Array) => signWithPrivateKey(privateKey, keyType, data),
  })
}

/** Keys that live only as long as the process: tests and throwaway CAs. */
export class MemoryKeyManager implements KeyManager {
  private readonly keys = new Map<string, Key>()

  async generateKey(id: string, type: KeyType): Promise<Key> {
    validateKeyId(id)
    const { privateKey, publicKey } = await generateSoftwareKeyPair(type)
    const key = softwareKey(id, type, privateKey, publicKey)
    this.keys.set(id, key)
    return key
  }

  async getKey(id: string): Promise<Key | undefined> {
    validateKeyId(id)
    return this.keys.get(id)
  }

  async listKeys(): Promise<Key[]> {
    return [...this.keys.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }

  async deleteKey(id: string): Promise<void> {
    validateKeyId(id)
    this.keys.delete(id)
  }
}
