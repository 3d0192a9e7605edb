import assert from 'node:assert/strict'
import { createHash, createPublicKey, verify } from 'node:crypto'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import pkcs11js from 'pkcs11js'
import { initSoftHsm, type SoftHsmToken } from '../../hardware-sim/softhsm.js'
import { cli } from '../helpers/exec.js'

// DER OID of prime256v1 (P-256): the CKA_EC_PARAMS SoftHSM expects.
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex')

/** Runs fn in a logged-in session on the token's slot; SOFTHSM2_CONF must point at the token. */
function withSession<T>(
  token: SoftHsmToken,
  pin: string,
  fn: (p: pkcs11js.PKCS11, session: Buffer) => T,
): T {
  // SoftHSM reads its config path from the environment at C_Initialize.
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const p = new pkcs11js.PKCS11()
  p.load(token.modulePath)
  p.C_Initialize()
  try {
    const slot = p
      .C_GetSlotList(true)
      .find((s) => p.C_GetTokenInfo(s).label.trim() === token.tokenLabel)
    assert.ok(slot, `slot for token ${token.tokenLabel}`)
    const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION)
    try {
      p.C_Login(session, pkcs11js.CKU_USER, pin)
      try {
        return fn(p, session)
      } finally {
        p.C_Logout(session)
      }
    } finally {
      p.C_CloseSession(session)
    }
  } finally {
    p.C_Finalize()
    p.close()
  }
}

/** CKA_EC_POINT is a DER OCTET STRING around the uncompressed point 04||X||Y. */
function ecPointToJwk(ecPoint: Buffer): { kty: 'EC'; crv: 'P-256'; x: string; y: string } {
  const point = ecPoint[0] === 0x04 && ecPoint[1] === 65 ? ecPoint.subarray(2) : ecPoint
  assert.equal(point.length, 65)
  assert.equal(point[0], 0x04)
  return {
    kty: 'EC',
    crv: 'P-256',
    x: point.subarray(1, 33).toString('base64url'),
    y: point.subarray(33).toString('base64url'),
  }
}

test('softhsm: an initialised token signs with a P-256 key that node:crypto verifies', async () => {
  await using token = await initSoftHsm({ label: 'sign-test' })
  assert.ok(token.slot >= 0)
  const data = Buffer.from('spiffe-edge softhsm round trip')
  const digest = createHash('sha256').update(data).digest()
  const { signature, ecPoint } = withSession(token, token.pin, (p, session) => {
    const keys = p.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_VERIFY, value: true },
        { type: pkcs11js.CKA_EC_PARAMS, value: P256_PARAMS },
      ],
      [
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_SIGN, value: true },
      ],
    )
    const [attr] = p.C_GetAttributeValue(session, keys.publicKey, [{ type: pkcs11js.CKA_EC_POINT }])
    assert.ok(attr?.value instanceof Buffer)
    p.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, keys.privateKey)
    const sig = p.C_Sign(session, digest, Buffer.alloc(64))
    return { signature: Buffer.from(sig), ecPoint: Buffer.from(attr.value) }
  })
  assert.equal(signature.length, 64)
  const key = createPublicKey({ key: ecPointToJwk(ecPoint), format: 'jwk' })
  // CKM_ECDSA returns raw r||s, which node calls the ieee-p1363 encoding.
  const ok = verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature)
  assert.equal(ok, true)
})

test('softhsm: a wrong PIN fails with CKR_PIN_INCORRECT', async () => {
  await using token = await initSoftHsm({ label: 'pin-test', pin: '1111222233334444' })
  assert.throws(
    () => withSession(token, '9999999999999999', () => undefined),
    (err: unknown) => (err as { code?: unknown }).code === pkcs11js.CKR_PIN_INCORRECT,
  )
  // The right PIN still works afterwards: one failure must not lock the token.
  assert.equal(
    withSession(token, token.pin, () => 'ok'),
    'ok',
  )
})

test('softhsm: init twice on one state dir returns the same token; files are private', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-hsm-test-'))
  try {
    const first = await initSoftHsm({ stateDir: dir, label: 'twice' })
    const second = await initSoftHsm({ stateDir: dir, label: 'twice' })
    assert.equal(second.slot, first.slot)
    assert.equal(second.tokenLabel, first.tokenLabel)
    assert.equal(second.pin, first.pin)
    assert.equal(second.confPath, join(dir, 'softhsm2.conf'))
    assert.equal(statSync(first.confPath).mode & 0o777, 0o600)
    assert.equal(statSync(join(dir, 'token.json')).mode & 0o777, 0o600)
    assert.equal(statSync(join(dir, 'tokens')).mode & 0o777, 0o700)
    // A caller-owned state dir survives dispose.
    await first[Symbol.asyncDispose]()
    assert.equal(statSync(dir).isDirectory(), true)
    await assert.rejects(initSoftHsm({ stateDir: dir, label: 'other' }), {
      code: 'ERR_SIM_STATE_DIR',
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('softhsm: a temp state dir is removed on dispose', async () => {
  let dir: string
  {
    await using token = await initSoftHsm()
    dir = token.stateDir
    assert.equal(statSync(dir).isDirectory(), true)
    assert.match(token.pin, /^[0-9a-f]{16}$/)
  }
  assert.throws(() => statSync(dir), { code: 'ENOENT' })
})

test('cli: sim hsm init prints one JSON line and is idempotent', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-hsm-cli-'))
  const run = async (): Promise<Record<string, unknown>> => {
    const r = await cli(['sim', 'hsm', 'init', '--state', dir])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim().split('\n').length, 1)
    return JSON.parse(r.stdout) as Record<string, unknown>
  }
  try {
    const a = await run()
    assert.equal(a.token_label, 'spiffe-edge')
    assert.equal(typeof a.slot, 'number')
    assert.equal(a.softhsm2_conf, join(dir, 'softhsm2.conf'))
    assert.equal(a.state, dir)
    for (const k of ['module', 'pin', 'so_pin']) assert.equal(typeof a[k], 'string', k)
    assert.deepEqual(await run(), a)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
