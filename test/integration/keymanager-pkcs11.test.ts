/**
 * The PKCS#11 key manager against a real SoftHSM2 token: the shared conformance suite, then what
 * only hardware does: wrong PIN, missing token, a key deleted behind our back, a token that
 * vanishes mid-run and comes back, private keys that cannot be read out, C_Initialize once.
 * SoftHSM2 reads SOFTHSM2_CONF at C_Initialize and a module is initialized once per process, so
 * every test in this file shares one token; each manager gets its own key_label_prefix.
 */
import assert from 'node:assert/strict'
import { randomBytes, verify } from 'node:crypto'
import { cpSync, mkdtempSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { after, before, test } from 'node:test'
import pkcs11js from 'pkcs11js'
import { initSoftHsm, type SoftHsmToken } from '../../hardware-sim/softhsm.js'
import { Pkcs11KeyManager, type Pkcs11Options } from '../../src/keymanager/pkcs11/manager.js'
import { loadedModuleCount, Pkcs11Module } from '../../src/keymanager/pkcs11/module.js'
import { KEY_TYPES } from '../../src/keymanager/types.js'
import { runKeyManagerConformance, verifies } from '../helpers/keymanager-conformance.js'

const stateDir = mkdtempSync(join(tmpdir(), 'spiffe-edge-km-p11-'))
let token: SoftHsmToken
let n = 0

before(async () => {
  token = await initSoftHsm({ stateDir, label: 'km-conformance' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
})
after(() => rmSync(stateDir, { recursive: true, force: true }))

const options = (prefix: string, over: Partial<Pkcs11Options> = {}): Pkcs11Options => ({
  modulePath: token.modulePath,
  token: { label: token.tokenLabel },
  pin: token.pin,
  keyLabelPrefix: prefix,
  ...over,
})

runKeyManagerConformance('pkcs11', {
  make: () => Pkcs11KeyManager.open(options(`t${++n}-${randomBytes(3).toString('hex')}`)),
  reopen: (km) => Pkcs11KeyManager.open(options((km as Pkcs11KeyManager).prefix)),
  close: (km) => (km as Pkcs11KeyManager).close(),
  keyTypes: KEY_TYPES,
  neverOverwrites: true,
})

/** A raw session on the shared module, as another application on the token would have. */
async function raw<T>(fn: (p: pkcs11js.PKCS11, s: pkcs11js.Handle) => T): Promise<T> {
  const mod = Pkcs11Module.acquire(token.modulePath)
  try {
    return await mod.run((p) => {
      const slot = p
        .C_GetSlotList(true)
        .find((x) => p.C_GetTokenInfo(x).label.trim() === token.tokenLabel)
      assert.ok(slot)
      const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION)
      try {
        try {
          p.C_Login(s, pkcs11js.CKU_USER, token.pin)
        } catch (err) {
          if ((err as { code?: number }).code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err
        }
        return fn(p, s)
      } finally {
        p.C_CloseSession(s)
      }
    })
  } finally {
    mod.release()
  }
}

function objectsLabelled(p: pkcs11js.PKCS11, s: pkcs11js.Handle, label: string): pkcs11js.Handle[] {
  p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: label }])
  try {
    return p.C_FindObjects(s, 100)
  } finally {
    p.C_FindObjectsFinal(s)
  }
}

async function withManager(prefix: string, fn: (km: Pkcs11KeyManager) => Promise<void>) {
  const km = await Pkcs11KeyManager.open(options(prefix))
  try {
    await fn(km)
  } finally {
    km.close()
  }
}

test('pkcs11: private keys are sensitive, not extractable, token objects; CKA_VALUE cannot be read', () =>
  withManager('attrs', async (km) => {
    const key = await km.generateKey('ca', 'ec-p256')
    await raw((p, s) => {
      const [priv] = objectsLabelled(p, s, 'attrs/ca').filter(
        (h) =>
          p.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_CLASS }])[0]!.value!.readUInt32LE(0) ===
          pkcs11js.CKO_PRIVATE_KEY,
      )
      assert.ok(priv)
      const attrs = p.C_GetAttributeValue(s, priv, [
        { type: pkcs11js.CKA_TOKEN },
        { type: pkcs11js.CKA_SENSITIVE },
        { type: pkcs11js.CKA_EXTRACTABLE },
        { type: pkcs11js.CKA_PRIVATE },
        { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
        { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
      ])
      assert.deepEqual(
        attrs.map((a) => (a.value as Buffer)[0]),
        [1, 1, 0, 1, 1, 1],
        'CKA_TOKEN, SENSITIVE, !EXTRACTABLE, PRIVATE, ALWAYS_SENSITIVE, NEVER_EXTRACTABLE',
      )
      assert.throws(
        () => p.C_GetAttributeValue(s, priv, [{ type: pkcs11js.CKA_VALUE }]),
        (err: { code?: number }) => err.code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      )
      assert.throws(
        () => p.C_GetAttributeValue(s, priv, [{ type: pkcs11js.CKA_PRIVATE_EXPONENT }]),
        (err: { code?: number }) =>
          err.code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE ||
          err.code === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID,
      )
    })
    assert.equal(key.ckaId.length, 32)
    assert.equal(key.label, 'attrs/ca')
  }))

test('pkcs11: RSA-PSS where the token has it', () =>
  withManager('pss', async (km) => {
    assert.equal(km.supportsPss, true, 'SoftHSM2 offers CKM_SHA256_RSA_PKCS_PSS')
    const key = await km.generateKey('rsa', 'rsa-2048')
    const msg = Buffer.from('pss me')
    const sig = await key.signPss!(msg)
    const ok = verify('sha256', msg, { key: key.publicKey, padding: 6, saltLength: 32 }, sig)
    assert.equal(ok, true)
    assert.equal((await km.generateKey('ec', 'ec-p256')).signPss, undefined)
  }))

test('pkcs11: the module is initialized once per process and finalized with the last user', async () => {
  const before = loadedModuleCount()
  const a = await Pkcs11KeyManager.open(options('once-a'))
  const b = await Pkcs11KeyManager.open(options('once-b'))
  assert.equal(loadedModuleCount(), Math.max(before, 1))
  const ka = await a.generateKey('k', 'ec-p256')
  a.close()
  // b still works: a's close did not C_Finalize the shared module.
  const kb = await b.generateKey('k', 'ec-p256')
  assert.ok(verifies(kb, await kb.sign(Buffer.from('x')), Buffer.from('x')))
  await assert.rejects(ka.sign(Buffer.from('x')), { code: 'ERR_PKCS11' })
  b.close()
})

test('pkcs11: a wrong PIN is ERR_PKCS11_PIN and is not retried', async () => {
  await assert.rejects(
    Pkcs11KeyManager.open(options('pin', { pin: 'not-the-pin' })),
    (err: { code?: string; remedy?: string }) => {
      assert.equal(err.code, 'ERR_PKCS11_PIN')
      assert.match(err.remedy ?? '', /pin_file or pin_env/)
      return true
    },
  )
  // The real PIN still works: one refusal did not lock the token.
  await withManager('pin', async (km) => {
    assert.deepEqual(await km.listKeys(), [])
  })
})

test('pkcs11: a missing token is ERR_PKCS11_TOKEN_MISSING naming the label; a missing module ERR_PKCS11_MODULE', async () => {
  await assert.rejects(
    Pkcs11KeyManager.open(options('missing', { token: { label: 'no-such-token' } })),
    (err: { code?: string; message?: string }) => {
      assert.equal(err.code, 'ERR_PKCS11_TOKEN_MISSING')
      assert.match(err.message ?? '', /no-such-token/)
      return true
    },
  )
  await assert.rejects(
    Pkcs11KeyManager.open(options('missing', { token: { serial: 'ffffffffffffffff' } })),
    { code: 'ERR_PKCS11_TOKEN_MISSING' },
  )
  await assert.rejects(
    Pkcs11KeyManager.open(options('missing', { modulePath: '/nonexistent/libnothing.so' })),
    { code: 'ERR_PKCS11_MODULE' },
  )
})

test('pkcs11: the token is found by serial number too', async () => {
  const serial = await raw((p, s) =>
    p.C_GetTokenInfo(p.C_GetSessionInfo(s).slotID).serialNumber.trim(),
  )
  const km = await Pkcs11KeyManager.open(options('serial', { token: { serial } }))
  try {
    const k = await km.generateKey('k', 'ec-p384')
    assert.ok(verifies(k, await k.sign(Buffer.from('by serial')), Buffer.from('by serial')))
  } finally {
    km.close()
  }
})

test('pkcs11: a key deleted behind our back is ERR_PKCS11_KEY_MISSING; the others keep signing', () =>
  withManager('deleted', async (km) => {
    const victim = await km.generateKey('victim', 'ec-p256')
    const other = await km.generateKey('other', 'ec-p256')
    await raw((p, s) => {
      for (const h of objectsLabelled(p, s, 'deleted/victim')) p.C_DestroyObject(s, h)
    })
    await assert.rejects(
      victim.sign(Buffer.from('x')),
      (err: { code?: string; remedy?: string }) => {
        assert.equal(err.code, 'ERR_PKCS11_KEY_MISSING')
        assert.ok(err.remedy)
        return true
      },
    )
    assert.ok(verifies(other, await other.sign(Buffer.from('x')), Buffer.from('x')))
    assert.equal(await km.getKey('victim'), undefined)
  }))

test('pkcs11: a token that vanishes mid-run fails with a code, and signing resumes when it returns', () =>
  withManager('vanish', async (km) => {
    const key = await km.generateKey('k', 'ec-p256')
    const tokens = join(token.stateDir, 'tokens')
    const saved = join(token.stateDir, 'tokens.saved')
    cpSync(tokens, saved, { recursive: true })
    // Signatures in flight while the token store disappears.
    const inflight = Array.from({ length: 20 }, (_, i) => key.sign(Buffer.from(`in flight ${i}`)))
    rmSync(tokens, { recursive: true, force: true })
    const settled = await Promise.allSettled(inflight)
    for (const r of settled) {
      if (r.status === 'rejected') {
        assert.match(
          String((r.reason as { code?: string }).code),
          /^ERR_PKCS11(_TOKEN_REMOVED|_TOKEN_MISSING|_KEY_MISSING)?$/,
        )
      }
    }
    await assert.rejects(
      key.sign(Buffer.from('gone')),
      (err: { code?: string; remedy?: string }) => {
        assert.match(String(err.code), /^ERR_PKCS11_(TOKEN_REMOVED|TOKEN_MISSING)$/)
        assert.ok(err.remedy)
        return true
      },
    )
    assert.equal(km.healthy(), false, 'unhealthy while the token is gone')
    renameSync(saved, tokens)
    // The manager looks for a missing token again at most once a second.
    await new Promise((r) => setTimeout(r, 1100))
    const sig = await key.sign(Buffer.from('back'))
    assert.ok(verifies(key, sig, Buffer.from('back')))
    assert.equal(km.healthy(), true, 'healthy again')
    const all = await Promise.all(
      Array.from({ length: 20 }, (_, i) => key.sign(Buffer.from(`${i}`))),
    )
    all.forEach((s, i) => {
      assert.ok(verifies(key, s, Buffer.from(`${i}`)))
    })
  }))

test('pkcs11: signMany signs a batch on a signing thread without holding the event loop; a token that vanishes mid-batch fails the whole batch with a code, and batches sign again when it returns', () =>
  withManager('vanish-batch', async (km) => {
    const key = await km.generateKey('k', 'ec-p256')
    const big = Array.from({ length: 1024 }, (_, i) => Buffer.from(`batch message ${i}`))
    const loop = monitorEventLoopDelay({ resolution: 1 })
    loop.enable()
    const t0 = performance.now()
    const sigs = await key.signMany!(big)
    const ms = performance.now() - t0
    loop.disable()
    assert.equal(sigs.length, big.length)
    sigs.forEach((sig, i) => {
      assert.ok(verifies(key, sig, big[i]!), `signature ${i} verifies`)
    })
    // A batch signed on the event loop would stall it for the whole batch.
    assert.ok(
      loop.max / 1e6 < ms / 2,
      `event loop delay max ${(loop.max / 1e6).toFixed(1)} ms during a ${ms.toFixed(1)} ms batch`,
    )

    const tokens = join(token.stateDir, 'tokens')
    const saved = join(token.stateDir, 'tokens.saved')
    cpSync(tokens, saved, { recursive: true })
    const job = key.signMany!(big)
    await new Promise((r) => setTimeout(r, 5))
    rmSync(tokens, { recursive: true, force: true })
    await assert.rejects(job, (err: { code?: string; remedy?: string }) => {
      assert.match(String(err.code), /^ERR_PKCS11_(TOKEN_REMOVED|TOKEN_MISSING|KEY_MISSING)$/)
      assert.ok(err.remedy)
      return true
    })
    renameSync(saved, tokens)
    await new Promise((r) => setTimeout(r, 1100)) // a missing token is looked for once a second
    const again = await key.signMany!(big.slice(0, 10))
    again.forEach((sig, i) => {
      assert.ok(verifies(key, sig, big[i]!))
    })
  }))

test('pkcs11: a second manager with another prefix does not see or touch our keys', async () => {
  const a = await Pkcs11KeyManager.open(options('share-a'))
  const b = await Pkcs11KeyManager.open(options('share-b'))
  try {
    await a.generateKey('ca', 'ec-p256')
    assert.deepEqual(await b.listKeys(), [])
    assert.equal(await b.getKey('ca'), undefined)
    await b.generateKey('ca', 'ec-p256') // same id, other prefix: no clash
    await b.deleteKey('ca')
    assert.ok(await a.getKey('ca'))
  } finally {
    a.close()
    b.close()
  }
})

// SoftHSM2 never reports these; real HSMs and USB tokens do. Injected into the real module's
// C_SignAsync once: the manager must reinitialize the module (a new generation), log in again and
// sign with the same key, with no error reaching the caller.
for (const ckr of [
  'CKR_DEVICE_REMOVED',
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_TOKEN_NOT_PRESENT',
] as const) {
  test(`pkcs11: ${ckr} from the token reopens it and the signature is retried`, () =>
    withManager(`inject-${ckr.slice(4, 14).toLowerCase()}`, async (km) => {
      const key = await km.generateKey('k', 'ec-p256')
      const mod = Pkcs11Module.acquire(token.modulePath)
      const real = mod.p.C_SignAsync
      let injected = 0
      mod.p.C_SignAsync = (...args: Parameters<typeof real>) => {
        if (injected++ === 0) {
          const code = (pkcs11js as unknown as Record<string, number>)[ckr]!
          return Promise.reject(new pkcs11js.Pkcs11Error(`${ckr}:${code}`, code, 'C_SignAsync'))
        }
        return real.apply(mod.p, args)
      }
      try {
        const before = mod.generation
        const msg = Buffer.from('after a reopen')
        assert.ok(verifies(key, await key.sign(msg), msg))
        assert.equal(injected, 2, 'failed once, then signed')
        assert.equal(mod.generation, before + 1, 'the module was reinitialized once')
      } finally {
        mod.p.C_SignAsync = real
        mod.release()
      }
    }))
}

test('pkcs11: a token that never comes back fails after bounded retries, with a code and remedy', () =>
  withManager('dead', async (km) => {
    const key = await km.generateKey('k', 'ec-p256')
    const mod = Pkcs11Module.acquire(token.modulePath)
    const real = mod.p.C_SignAsync
    let calls = 0
    mod.p.C_SignAsync = () => {
      calls++
      const code = pkcs11js.CKR_DEVICE_REMOVED
      return Promise.reject(
        new pkcs11js.Pkcs11Error(`CKR_DEVICE_REMOVED:${code}`, code, 'C_SignAsync'),
      )
    }
    try {
      await assert.rejects(
        key.sign(Buffer.from('x')),
        (err: { code?: string; remedy?: string }) => {
          assert.equal(err.code, 'ERR_PKCS11_TOKEN_REMOVED')
          assert.match(err.remedy ?? '', /HSM or token is connected/)
          return true
        },
      )
      assert.equal(calls, 3, 'one try and two retries, no more')
    } finally {
      mod.p.C_SignAsync = real
      mod.release()
    }
    const msg = Buffer.from('works again')
    assert.ok(verifies(key, await key.sign(msg), msg))
  }))

for (const maxSessions of [1, 3]) {
  test(`pkcs11: ${maxSessions} session(s) serve 100 concurrent signatures; no more are opened`, async () => {
    const km = await Pkcs11KeyManager.open(options(`sessions-${maxSessions}`, { maxSessions }))
    const mod = Pkcs11Module.acquire(token.modulePath)
    const real = mod.p.C_SignAsync
    const used = new Set<string>()
    let inFlight = 0
    let most = 0
    // Which sessions sign, and how many signatures are inside the token at once.
    mod.p.C_SignAsync = async (...args: Parameters<typeof real>) => {
      used.add(args[0].toString('hex'))
      most = Math.max(most, ++inFlight)
      try {
        return await real.apply(mod.p, args)
      } finally {
        inFlight--
      }
    }
    try {
      const key = await km.generateKey('k', 'ec-p256')
      const msgs = Array.from({ length: 100 }, (_, i) => Buffer.from(`m${i}`))
      const sigs = await Promise.all(msgs.map((m) => key.sign(m)))
      sigs.forEach((s, i) => {
        assert.ok(verifies(key, s, msgs[i]))
      })
      assert.equal(used.size, maxSessions, 'sessions opened up to the bound, and no more')
      assert.equal(most, maxSessions, 'one signature per session at a time')
    } finally {
      mod.p.C_SignAsync = real
      mod.release()
      km.close()
    }
  })
}
