/**
 * The key manager conformance suite: the contract of src/keymanager/types.ts checked through the
 * KeyManager interface only, so memory, disk, TPM and PKCS#11 run the same assertions: generate,
 * find after reopen, sign and verify with every key type the manager makes, list, rotate and
 * destroy, invalid ids, and 100 signatures at once with the event loop kept responsive.
 * Manager-specific failures (wrong PIN, vanished token, corrupt files) stay in each manager's tests.
 */
import assert from 'node:assert/strict'
import { verify } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { describe, test } from 'node:test'
import {
  type Key,
  type KeyManager,
  type KeyType,
  keyTypeOf,
  type Signer,
} from '../../src/keymanager/types.js'

const data = new TextEncoder().encode('to be signed')

export function verifies(signer: Signer, sig: Uint8Array, msg: Uint8Array = data): boolean {
  const hash = signer.keyType === 'ec-p384' ? 'sha384' : 'sha256'
  return verify(hash, msg, { key: signer.publicKey, dsaEncoding: 'ieee-p1363' }, sig)
}

export interface KeyManagerHarness {
  /** A fresh, empty manager (its own directory, token prefix or TPM). */
  make(): Promise<KeyManager>
  /** A new instance over the same storage, as after a restart. */
  reopen?(km: KeyManager): Promise<KeyManager>
  /** Releases a manager (sessions, TPM connections). */
  close?(km: KeyManager): Promise<void> | void
  /** The key types this manager makes; the others must be refused with ERR_KEY_MANAGER. */
  readonly keyTypes: readonly KeyType[]
  /** A second generateKey for an existing id is refused and the key kept. */
  readonly neverOverwrites?: boolean
  /** Bound for the worst event-loop stall during 100 concurrent signatures (ms). */
  readonly maxLoopDelayMs?: number
}

const ALL: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096']

/** Registers every conformance test for harness `h`, named `${name} key manager conformance`. */
export function runKeyManagerConformance(name: string, h: KeyManagerHarness): void {
  const managed = async (fn: (km: KeyManager) => Promise<void>): Promise<void> => {
    const km = await h.make()
    try {
      await fn(km)
    } finally {
      await h.close?.(km)
    }
  }
  const reopened = async (km: KeyManager, fn: (km2: KeyManager) => Promise<void>) => {
    if (!h.reopen) return
    const km2 = await h.reopen(km)
    try {
      await fn(km2)
    } finally {
      await h.close?.(km2)
    }
  }

  describe(`${name} key manager conformance`, () => {
    for (const type of h.keyTypes) {
      test(`generates ${type} keys that sign verifiably and are found again after reopen`, () =>
        managed(async (km) => {
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
          if (type === 'rsa-2048') assert.equal(sig.length, 256)
          if (type === 'rsa-3072') assert.equal(sig.length, 384)
          if (type === 'rsa-4096') assert.equal(sig.length, 512)
          const again = await km.getKey(key.id)
          assert.ok(again)
          assert.ok(verifies(again, await again.sign(data)))
          await reopened(km, async (km2) => {
            const k2 = await km2.getKey(key.id)
            assert.ok(k2, 'found after reopen')
            assert.equal(k2.keyType, type)
            assert.ok(k2.publicKey.equals(key.publicKey), 'same public key after reopen')
            assert.ok(verifies(key, await k2.sign(data)), 'same private key after reopen')
          })
        }))
    }

    test('a new key is kept before the agent relies on it: once generateKeyEarly says stored, or when generateKey returns', () =>
      managed(async (km) => {
        const type = h.keyTypes[0]!
        let key: Key
        if (km.generateKeyEarly) {
          const made = await km.generateKeyEarly('early', type)
          key = made.key
          // Signing does not wait for the write.
          assert.ok(verifies(key, await key.sign(data)))
          await made.stored
        } else {
          key = await km.generateKey('early', type)
        }
        const again = await km.getKey('early')
        assert.ok(again?.publicKey.equals(key.publicKey), 'found at once')
        await reopened(km, async (km2) => {
          const k2 = await km2.getKey('early')
          assert.ok(k2, 'kept across a reopen')
          assert.ok(k2.publicKey.equals(key.publicKey))
        })
      }))

    for (const type of ALL.filter((t) => !h.keyTypes.includes(t))) {
      test(`refuses ${type} keys with ERR_KEY_MANAGER`, () =>
        managed(async (km) => {
          await assert.rejects(km.generateKey(`no-${type}`, type), { code: 'ERR_KEY_MANAGER' })
          assert.equal(await km.getKey(`no-${type}`), undefined)
        }))
    }

    test('getKey of an unknown id is undefined; list, overwrite and delete', () =>
      managed(async (km) => {
        const t = h.keyTypes[0]!
        assert.equal(await km.getKey('nope'), undefined)
        assert.deepEqual(await km.listKeys(), [])
        const a = await km.generateKey('a', t)
        await km.generateKey('b', t)
        assert.deepEqual(
          (await km.listKeys()).map((k) => k.id),
          ['a', 'b'],
        )
        if (h.neverOverwrites) {
          // A key is never replaced (a lost datastore once made the server regenerate CA keys).
          await assert.rejects(km.generateKey('a', t), { code: 'ERR_KEY_MANAGER' })
          const kept = await km.getKey('a')
          assert.ok(kept?.publicKey.equals(a.publicKey))
        } else {
          const a2 = await km.generateKey('a', t)
          assert.ok(!a.publicKey.equals(a2.publicKey))
          assert.ok((await km.getKey('a'))?.publicKey.equals(a2.publicKey))
        }
        await km.deleteKey('a')
        await km.deleteKey('a') // idempotent
        assert.equal(await km.getKey('a'), undefined)
        assert.deepEqual(
          (await km.listKeys()).map((k) => k.id),
          ['b'],
        )
        await reopened(km, async (km2) => {
          assert.deepEqual(
            (await km2.listKeys()).map((k) => k.id),
            ['b'],
          )
        })
      }))

    test('rotation: a new key per generation, the retired one destroyed, the new one kept', () =>
      managed(async (km) => {
        const t = h.keyTypes[0]!
        const k1 = await km.generateKey('ca-1', t)
        const k2 = await km.generateKey('ca-2', t)
        assert.ok(!k1.publicKey.equals(k2.publicKey))
        await km.deleteKey('ca-1')
        assert.equal(await km.getKey('ca-1'), undefined)
        assert.ok(verifies(k2, await k2.sign(data)))
        // A handle to the destroyed key no longer signs (hardware) or still signs with the old,
        // now unpublished key (software); it never signs with another key.
        const late = await k1.sign(data).then(
          (s) => s,
          (err: { code?: string }) => err,
        )
        if (late instanceof Uint8Array) assert.ok(verifies(k1, late))
        else assert.match(String(late.code), /^ERR_/)
        await reopened(km, async (km2) => {
          assert.equal(await km2.getKey('ca-1'), undefined)
          const again = await km2.getKey('ca-2')
          assert.ok(again?.publicKey.equals(k2.publicKey))
        })
      }))

    test('invalid ids are ERR_KEY_MANAGER', () =>
      managed(async (km) => {
        for (const id of ['', 'a/b', '../x', 'a b', 'x'.repeat(65), 'é']) {
          await assert.rejects(km.generateKey(id, h.keyTypes[0]!), { code: 'ERR_KEY_MANAGER' }, id)
          await assert.rejects(km.getKey(id), { code: 'ERR_KEY_MANAGER' }, id)
          await assert.rejects(km.deleteKey(id), { code: 'ERR_KEY_MANAGER' }, id)
        }
        await assert.rejects(km.generateKey('ok', 'ed25519' as KeyType), {
          code: 'ERR_KEY_MANAGER',
        })
      }))

    test('100 concurrent signatures all verify and the event loop keeps running', (t) =>
      managed(async (km) => {
        const key = await km.generateKey('busy', h.keyTypes[0]!)
        const msgs = Array.from({ length: 100 }, (_, i) => new TextEncoder().encode(`m${i}`))
        const hist = monitorEventLoopDelay({ resolution: 10 })
        hist.enable()
        const sigs = await Promise.all(msgs.map((m) => key.sign(m)))
        hist.disable()
        sigs.forEach((s, i) => {
          assert.ok(verifies(key, s, msgs[i]), `signature ${i}`)
        })
        const maxMs = hist.max / 1e6
        t.diagnostic(
          `${name}: event loop delay during 100 concurrent signatures: max ${maxMs.toFixed(1)} ms`,
        )
        // Generous: 2 shared cores. A synchronous signer of slow hardware would stall far longer.
        assert.ok(maxMs < (h.maxLoopDelayMs ?? 500), `event loop stalled ${maxMs.toFixed(1)} ms`)
      }))
  })
}
