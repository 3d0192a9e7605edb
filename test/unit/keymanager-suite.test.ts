import assert from 'node:assert/strict'
import { createPrivateKey, verify } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { DiskKeyManager } from '../../src/keymanager/disk.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import {
  jwsAlgorithm,
  KEY_TYPES,
  type KeyManager,
  type KeyType,
  keyTypeOf,
  type Signer,
  softwareSigner,
  webCryptoAlgorithm,
} from '../../src/keymanager/types.js'

const data = new TextEncoder().encode('to be signed')

function verifies(signer: Signer, sig: Uint8Array, msg = data): boolean {
  const hash = signer.keyType === 'ec-p384' ? 'sha384' : 'sha256'
  return verify(hash, msg, { key: signer.publicKey, dsaEncoding: 'ieee-p1363' }, sig)
}

const tmpDirs: string[] = []
after(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true })
})

async function newDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'spiffe-edge-km-'))
  tmpDirs.push(d)
  return join(d, 'keys') // not created yet: the manager must create it 0700
}

interface Harness {
  make(): Promise<KeyManager>
  /** A new instance over the same storage, when the store persists. */
  reopen?(km: KeyManager): KeyManager
  /** A second generateKey for an existing id is refused and the key kept. */
  readonly neverOverwrites?: boolean
}

function keyManagerSuite(name: string, h: Harness): void {
  describe(`${name} key manager conformance`, () => {
    for (const type of KEY_TYPES) {
      test(`generates ${type} keys that sign verifiably`, async () => {
        const km = await h.make()
        const key = await km.generateKey(`k-${type}`, type)
        assert.equal(key.id, `k-${type}`)
        assert.equal(key.keyType, type)
        assert.equal(keyTypeOf(key.publicKey), type)
        assert.equal(key.publicKey.type, 'public')
        const sig = await key.sign(data)
        assert.ok(verifies(key, sig))
        assert.ok(!verifies(key, sig, new TextEncoder().encode('other')))
        if (type === 'ec-p256') assert.equal(sig.length, 64) // P1363 r||s, not DER
        if (type === 'ec-p384') assert.equal(sig.length, 96)
        if (type === 'rsa-4096') assert.equal(sig.length, 512)
        const again = await km.getKey(key.id)
        assert.ok(again)
        assert.ok(verifies(again, await again.sign(data)))
        if (h.reopen) {
          const reopened = await h.reopen(km).getKey(key.id)
          assert.ok(reopened)
          assert.equal(reopened.keyType, type)
          assert.ok(verifies(key, await reopened.sign(data)), 'same key after reopen')
        }
      })
    }

    test('getKey of an unknown id is undefined; list, overwrite and delete', async () => {
      const km = await h.make()
      assert.equal(await km.getKey('nope'), undefined)
      assert.deepEqual(await km.listKeys(), [])
      const a = await km.generateKey('a', 'ec-p256')
      await km.generateKey('b', 'ec-p384')
      assert.deepEqual(
        (await km.listKeys()).map((k) => [k.id, k.keyType]),
        [
          ['a', 'ec-p256'],
          ['b', 'ec-p384'],
        ],
      )
      if (h.neverOverwrites) {
        // A key file is never replaced (a lost datastore once made the server regenerate CA keys).
        await assert.rejects(km.generateKey('a', 'ec-p384'), { code: 'ERR_KEY_MANAGER' })
        const kept = await (h.reopen ? h.reopen(km) : km).getKey('a')
        assert.equal(kept?.keyType, 'ec-p256')
        assert.ok(kept?.publicKey.equals(a.publicKey))
      } else {
        const a2 = await km.generateKey('a', 'ec-p384')
        const got = await km.getKey('a')
        assert.equal(got?.keyType, 'ec-p384')
        assert.ok(!a.publicKey.equals(a2.publicKey))
        assert.ok(got?.publicKey.equals(a2.publicKey))
      }
      await km.deleteKey('a')
      await km.deleteKey('a') // idempotent
      assert.equal(await km.getKey('a'), undefined)
      assert.deepEqual(
        (await km.listKeys()).map((k) => k.id),
        ['b'],
      )
      if (h.reopen) {
        const ids = (await h.reopen(km).listKeys()).map((k) => k.id)
        assert.deepEqual(ids, ['b'])
      }
    })

    test('invalid ids and key types are ERR_KEY_MANAGER', async () => {
      const km = await h.make()
      for (const id of ['', 'a/b', '../x', 'a b', 'x'.repeat(65), 'é']) {
        await assert.rejects(km.generateKey(id, 'ec-p256'), { code: 'ERR_KEY_MANAGER' }, id)
        await assert.rejects(km.getKey(id), { code: 'ERR_KEY_MANAGER' }, id)
        await assert.rejects(km.deleteKey(id), { code: 'ERR_KEY_MANAGER' }, id)
      }
      await assert.rejects(km.generateKey('ok', 'ed25519' as KeyType), {
        code: 'ERR_KEY_MANAGER',
      })
      assert.ok(await km.generateKey(`A.z_0-${'x'.repeat(58)}`, 'ec-p256'))
    })
  })
}

keyManagerSuite('memory', { make: async () => new MemoryKeyManager() })

const diskDirs = new WeakMap<KeyManager, string>()
keyManagerSuite('disk', {
  make: async () => {
    const dir = await newDir()
    const km = new DiskKeyManager(dir)
    diskDirs.set(km, dir)
    return km
  },
  reopen: (km) => new DiskKeyManager(diskDirs.get(km)!),
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
    ['ES256', 'ES384', 'RS256', 'RS256'],
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
