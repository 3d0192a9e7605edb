/**
 * A server whose CA and JWT keys are RSA-3072 keys in a SoftHSM2 token: X509-SVIDs verify with
 * OpenSSL (the CA certificate's key is the token's), JWT-SVIDs (RS256) with jose against the
 * bundle; a restart finds the same CA in the token; and it fails closed both ways: token keys
 * without their datastore, and a datastore whose CA key was deleted from the token.
 */
import assert from 'node:assert/strict'
import { createPublicKey } from 'node:crypto'
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
import { createCsr } from '../../src/spiffe/csr.js'
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

test('a batch of CSRs is signed on several token sessions at once, results in request order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-server-p11-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'srv' })
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
  const pinFile = join(dir, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  chmodSync(pinFile, 0o600)
  await using s = await startTestServer({
    extraToml: tokenToml(token, pinFile).replace('ca_key_type = "rsa-3072"\n', ''),
  })
  const keys = new MemoryKeyManager()
  const agentKey = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  // The server's module, shared in this process: every CA signature takes 30 ms, as on a slow HSM.
  const mod = Pkcs11Module.acquire(token.modulePath)
  const real = mod.p.C_SignAsync
  let inFlight = 0
  let most = 0
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
    const csr = await createCsr(await keys.generateKey('w', 'ec-p256'))
    const params = Array.from({ length: 16 }, (_, i) => ({
      entryId: String(entries[i % 2]!.id),
      csr,
    }))
    mod.p.C_SignAsync = async (...args: Parameters<typeof real>) => {
      most = Math.max(most, ++inFlight)
      try {
        await new Promise((r) => setTimeout(r, 30))
        return await real.apply(mod.p, args)
      } finally {
        inFlight--
      }
    }
    const batch = await client.call('BatchNewX509SVID', { params }, auth)
    assert.deepEqual(
      batch.results.map((r) => r.svid?.spiffeId),
      params.map((_, i) => `spiffe://example.org/${i % 2 === 0 ? 'a' : 'b'}`),
    )
    assert.ok(most >= 2, `signatures overlapped in the token (at most ${most} at once)`)
  } finally {
    mod.p.C_SignAsync = real
    mod.release()
    client.close()
  }
})
