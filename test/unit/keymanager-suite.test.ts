import assert from 'node:assert/strict'
import { createPrivateKey } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import {
  jwsAlgorithm,
  KEY_TYPES,
  type KeyManager,
  softwareSigner,
  webCryptoAlgorithm,
} from '../../src/keymanager/types.js'
import { runKeyManagerConformance, verifies } from '../helpers/keymanager-conformance.js'

const data = new TextEncoder().encode('to be signed')

const tmpDirs: string[] = []
after(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true })
})

async function newDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'spiffe-edge-km-'))
  tmpDirs.push(d)
  return join(d, 'keys') // not created yet: the manager must create it 0700
}

runKeyManagerConformance('memory', {
  make: async () => new MemoryKeyManager(),
  keyTypes: KEY_TYPES,
})

const diskDirs = new WeakMap<KeyManager, string>()
runKeyManagerConformance('disk', {
  make: async () => {
    const dir = await newDir()
    const km = new DiskKeyManager(dir)
    diskDirs.set(km, dir)
    return km
  },
  reopen: async (km) => new DiskKeyManager(diskDirs.get(km)!),
  keyTypes: KEY_TYPES,
  neverOverwrites: true,
})

test('disk: files are PKCS#8 PEM, 0600, in a 0700 directory, with no temp files left', async () => {
  const dir = await newDir()
  const km = new DiskKeyManager(dir)
  await km.generateKey('ca', 'ec-p256')
  await assert.rejects(km.generateKey('ca', 'ec-p256'), { code: 'ERR_KEY_MANAGER' })
  assert.equal((await stat(dir)).mode & 0o777, 0o700)
  assert.deepEqual(await readdir(dir), ['ca.key.pem'])
  const file = join(dir, 'ca.key.pem')
  assert.equal((await stat(file)).mode & 0o777, 0o600)
  const pem = await readFile(file, 'utf8')
  assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/)
  assert.equal(createPrivateKey(pem).asymmetricKeyType, 'ec')
})

test('disk: a corrupt or foreign key file is ERR_KEY_MANAGER with a remedy', async () => {
  const dir = await newDir()
  const km = new DiskKeyManager(dir)
  await km.generateKey('good', 'ec-p256')
  await writeFile(join(dir, 'bad.key.pem'), '-----BEGIN PRIVATE KEY-----\nnope\n', {
    mode: 0o600,
  })
  await assert.rejects(km.getKey('bad'), (err: unknown) => {
    assert.equal((err as { code?: string }).code, 'ERR_KEY_MANAGER')
    assert.ok((err as { remedy?: string }).remedy)
    return true
  })
  await assert.rejects(km.listKeys(), { code: 'ERR_KEY_MANAGER' })
  const { generateKeyPairSync } = await import('node:crypto')
  const ed = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' })
  await writeFile(join(dir, 'bad.key.pem'), ed, { mode: 0o600 })
  await assert.rejects(km.getKey('bad'), { code: 'ERR_KEY_MANAGER' })
  await km.deleteKey('bad')
  assert.deepEqual(
    (await km.listKeys()).map((k) => k.id),
    ['good'],
  )
})

test('disk: an unusable directory is ERR_KEY_MANAGER', async () => {
  const dir = await newDir()
  await writeFile(`${dir}`, 'a file, not a directory')
  const km = new DiskKeyManager(join(dir, 'sub'))
  await assert.rejects(km.generateKey('x', 'ec-p256'), { code: 'ERR_KEY_MANAGER' })
})

test('algorithm helpers and softwareSigner', async () => {
  assert.deepEqual(
    KEY_TYPES.map((t) => jwsAlgorithm(t)),
    ['ES256', 'ES384', 'RS256', 'RS256', 'RS256'],
  )
  assert.deepEqual(webCryptoAlgorithm('ec-p384'), {
    name: 'ECDSA',
    hash: 'SHA-384',
    namedCurve: 'P-384',
  })
  assert.deepEqual(webCryptoAlgorithm('rsa-2048'), { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' })
  const { generateKeyPairSync } = await import('node:crypto')
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-384' })
  const s = softwareSigner(privateKey)
  assert.equal(s.keyType, 'ec-p384')
  assert.ok(s.publicKey.equals(publicKey))
  assert.ok(verifies(s, await s.sign(data)))
  assert.throws(() => softwareSigner(publicKey), { code: 'ERR_KEY_MANAGER' })
  const ed = generateKeyPairSync('ed25519').privateKey
  assert.throws(() => softwareSigner(ed), { code: 'ERR_KEY_MANAGER' })
})
