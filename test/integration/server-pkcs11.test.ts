/**
 * A server whose CA and JWT keys are RSA-3072 keys in a SoftHSM2 token: X509-SVIDs verify with
 * OpenSSL (the CA certificate's key is the token's), JWT-SVIDs (RS256) with jose against the
 * bundle; a restart finds the same CA in the token; and it fails closed both ways: token keys
 * without their datastore, and a datastore whose CA key was deleted from the token.
 */
import assert from 'node:assert/strict'
import { createPublicKey, X509Certificate } from 'node:crypto'
import { chmodSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { createLocalJWKSet, jwtVerify } from 'jose'
import { initSoftHsm, type SoftHsmToken } from '../../hardware-sim/softhsm.js'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { Pkcs11KeyManager } from '../../src/keymanager/pkcs11/manager.js'
import { Pkcs11Module } from '../../src/keymanager/pkcs11/module.js'
import { createCsr, publicKeyFromCsr } from '../../src/spiffe/csr.js'
import { TrustDomain } from '../../src/spiffe/id.js'
import { GrpcNodeClient } from '../../src/transport/grpc-client.js'
import { run } from '../helpers/exec.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')
const pem = (der: Uint8Array) => new x509.X509Certificate(der).toString('pem')

function tokenToml(token: SoftHsmToken, pinFile: string): string {
  return (
    'ca_key_type = "rsa-3072"\nattest_rate_per_second = 1000\n[plugins.KeyManager.pkcs11]\n' +
    `module_path = "${token.modulePath}"\ntoken_label = "${token.tokenLabel}"\npin_file = "${pinFile}"\nkey_label_prefix = "srv"\n`
  )
}

test('server with RSA-3072 CA and JWT keys in SoftHSM2: SVIDs verify, restart keeps the CA, lost keys or datastore refuse', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-p11-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'srv' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  chmodSync(pinFile, 0o600)
  const serverDir = join(dir, 'server')
  mkdirSync(serverDir, { mode: 0o700 })
  const start = () => startTestServer({ dir: serverDir, extraToml: tokenToml(token, pinFile) })

  let caPem: string
  {
    await using s = await start()
    const keys = new MemoryKeyManager()
    const agentKey = await keys.generateKey('agent', 'ec-p256')
    const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
    try {
      const att = await client.attestAgent(joinTokenAgentAttestor(await s.token()), agentKey)
      const auth = { spiffeId: att.svid.spiffeId, chain: att.svid.certChain, signer: agentKey }
      const entry = await s.admin('POST', '/v1/entries', {
        spiffe_id: 'spiffe://example.org/web',
        parent_id: att.svid.spiffeId,
        selectors: [{ type: 'unix', value: 'uid:0' }],
      })
      const csr = await createCsr(await keys.generateKey('w', 'ec-p256'))
      const batch = await client.call(
        'BatchNewX509SVID',
        { params: [{ entryId: String(entry.id), csr }] },
        auth,
      )
      assert.equal(batch.results[0]!.status, 0)
      const bundle = client.currentBundle()!
      caPem = bundle.toPem()
      writeFileSync(join(dir, 'bundle.pem'), caPem)
      writeFileSync(join(dir, 'svid.pem'), batch.results[0]!.svid!.certChain.map(pem).join('\n'))
      const v = await run('openssl', [
        'verify',
        '-CAfile',
        join(dir, 'bundle.pem'),
        join(dir, 'svid.pem'),
      ])
      assert.equal(v.code, 0, v.stdout + v.stderr)
      const sigAlg = await run('openssl', ['x509', '-in', join(dir, 'svid.pem'), '-noout', '-text'])
      assert.match(sigAlg.stdout, /Signature Algorithm: sha256WithRSAEncryption/)

      // The CA certificate's key is the token's x509-ca key.
      const look = await Pkcs11KeyManager.open({
        modulePath: token.modulePath,
        token: { label: 'srv' },
        pin: token.pin,
        keyLabelPrefix: 'srv',
      })
      const held = await look.listKeys()
      look.close()
      const caKey = held.find((k) => k.id.startsWith('x509-ca-'))
      assert.ok(caKey)
      assert.equal(caKey.keyType, 'rsa-3072')
      const caCert = new x509.X509Certificate(caPem)
      const caSpki = createPublicKey({
        key: Buffer.from(caCert.publicKey.rawData),
        format: 'der',
        type: 'spki',
      })
      assert.ok(caSpki.equals(caKey.publicKey))

      const jwt = await client.call(
        'NewJWTSVID',
        { entryId: String(entry.id), audience: ['db'] },
        auth,
      )
      const jwks = JSON.parse((await client.call('GetBundle', {})).bundle) as {
        keys: { use: string }[]
      }
      const verified = await jwtVerify(
        jwt.token,
        createLocalJWKSet({
          keys: jwks.keys.filter((k) => k.use === 'jwt-svid').map(({ use: _use, ...k }) => k),
        } as never),
        { audience: 'db', algorithms: ['RS256'] },
      )
      assert.equal(verified.payload.sub, 'spiffe://example.org/web')
    } finally {
      client.close()
    }
  }

  // Restart: the same CA, from the token.
  {
    await using s = await start()
    const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
    try {
      const keys = new MemoryKeyManager()
      const att = await client.attestAgent(
        joinTokenAgentAttestor(await s.token()),
        await keys.generateKey('a', 'ec-p256'),
      )
      assert.equal(att.bundle.toPem(), caPem, 'same CA after restart')
    } finally {
      client.close()
    }
  }

  // The datastore lost: the token's keys are not silently joined by a new CA.
  const datastore = join(serverDir, 'data', 'datastore.sqlite3')
  const away = join(dir, 'datastore-away')
  mkdirSync(away)
  const moveAll = (from: string, to: string) => {
    for (const suffix of ['', '-wal', '-shm']) {
      try {
        renameSync(join(from, `datastore.sqlite3${suffix}`), join(to, `datastore.sqlite3${suffix}`))
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOENT') throw err
      }
    }
  }
  moveAll(join(serverDir, 'data'), away)
  await assert.rejects(start(), (err: { code?: string; remedy?: string }) => {
    assert.equal(err.code, 'ERR_DATASTORE_MISSING')
    assert.match(err.remedy ?? '', /key_label_prefix/)
    return true
  })
  for (const suffix of ['', '-wal', '-shm']) rmSync(`${datastore}${suffix}`, { force: true })
  moveAll(away, join(serverDir, 'data'))

  // The CA key deleted from the token: the datastore names a key the token lacks.
  const km = await Pkcs11KeyManager.open({
    modulePath: token.modulePath,
    token: { label: 'srv' },
    pin: token.pin,
    keyLabelPrefix: 'srv',
  })
  const ca = (await km.listKeys()).find((k) => k.id.startsWith('x509-ca-'))!
  await km.deleteKey(ca.id)
  km.close()
  await assert.rejects(start(), {
    code: 'ERR_KEY_MANAGER',
    message: /the key manager does not hold: x509-ca-/,
  })
})

test('a batch of CSRs is signed in chunks on signing threads, several sessions at once, results in request order; a token gone fails every SVID with a code', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-p11-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'srv' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  chmodSync(pinFile, 0o600)
  // RSA-3072: a few ms per signature in SoftHSM2, so chunks overlap as on a slow HSM.
  await using s = await startTestServer({ extraToml: tokenToml(token, pinFile) })
  const keys = new MemoryKeyManager()
  const agentKey = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  // The server's module, shared in this process: count module jobs in flight, and signatures
  // made one hop each (C_SignAsync) rather than in a signing thread's job.
  const mod = Pkcs11Module.acquire(token.modulePath)
  const realRun = mod.run
  const realSignAsync = mod.p.C_SignAsync
  let inFlight = 0
  let most = 0
  let singleHops = 0
  try {
    const att = await client.attestAgent(joinTokenAgentAttestor(await s.token()), agentKey)
    const auth = { spiffeId: att.svid.spiffeId, chain: att.svid.certChain, signer: agentKey }
    const entries = await Promise.all(
      ['a', 'b'].map((n) =>
        s.admin('POST', '/v1/entries', {
          spiffe_id: `spiffe://example.org/${n}`,
          parent_id: att.svid.spiffeId,
          selectors: [{ type: 'unix', value: `uid:${n === 'a' ? 1 : 2}` }],
        }),
      ),
    )
    // Distinct CSRs, each its own key.
    const params = await Promise.all(
      Array.from({ length: 48 }, async (_, i) => ({
        entryId: String(entries[i % 2]!.id),
        csr: await createCsr(await keys.generateKey(`w${i}`, 'ec-p256')),
      })),
    )
    mod.run = async function <T>(this: Pkcs11Module, fn: Parameters<typeof realRun>[0]) {
      most = Math.max(most, ++inFlight)
      try {
        return (await realRun.call(this, fn)) as T
      } finally {
        inFlight--
      }
    } as typeof realRun
    mod.p.C_SignAsync = (...args: Parameters<typeof realSignAsync>) => {
      singleHops++
      return realSignAsync.apply(mod.p, args)
    }
    const batch = await client.call('BatchNewX509SVID', { params }, auth)
    assert.deepEqual(
      batch.results.map((r) => r.svid?.spiffeId),
      params.map((_, i) => `spiffe://example.org/${i % 2 === 0 ? 'a' : 'b'}`),
    )
    // Each SVID carries its own CSR's key and verifies under the token's CA key.
    const ca = new X509Certificate(client.currentBundle()!.toPem())
    for (const [i, r] of batch.results.entries()) {
      const leaf = new X509Certificate(r.svid!.certChain[0]!)
      assert.ok(leaf.verify(ca.publicKey), `SVID ${i} verifies under the CA`)
      const want = (await publicKeyFromCsr(params[i]!.csr)).export({ type: 'spki', format: 'der' })
      const got = leaf.publicKey.export({ type: 'spki', format: 'der' })
      assert.ok(got.equals(want), `SVID ${i} carries its own CSR's key`)
    }
    assert.ok(most >= 2, `token jobs overlapped (at most ${most} at once)`)
    assert.equal(singleHops, 0, 'CA signatures go through signing-thread jobs, not one hop each')

    // The token store goes away: every SVID of the next batch fails, UNAVAILABLE, with the code.
    rmSync(join(token.stateDir, 'tokens'), { recursive: true, force: true })
    const gone = await client.call('BatchNewX509SVID', { params: params.slice(0, 20) }, auth)
    assert.equal(gone.results.length, 20)
    for (const r of gone.results) {
      assert.equal(r.status, 14, `UNAVAILABLE, not ${r.status}: ${r.message}`)
      assert.match(r.message, /^ERR_PKCS11_(TOKEN_REMOVED|TOKEN_MISSING|KEY_MISSING): /)
      assert.ok(!r.svid, 'no SVID')
    }
  } finally {
    mod.run = realRun
    mod.p.C_SignAsync = realSignAsync
    mod.release()
    client.close()
  }
})
