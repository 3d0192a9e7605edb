/**
 * Goal: X.509-SVID issuance with the CA key in an HSM reaches at least 1/2 of the raw PKCS#11
 * ECDSA signing rate of that key.
 *
 * In one run, against one SoftHSM2 token: BatchNewX509SVID over loopback gRPC with the server's
 * CA key in the token (batches of 100 CSRs, signed envelope, TLS, CSR checks, certificate
 * building, the CA signature through the PKCS#11 key manager), against raw pkcs11js signing with
 * the same token key: C_SignInit + C_Sign of a SHA-256 digest in a loop on one session, the
 * fastest a single caller can get out of the token. Also: the worst event-loop stall during 100
 * concurrent signatures through the key manager. Prints SVIDs/s, signatures/s and the ratio.
 *
 * Run: npm run build && node dist/bench/pkcs11.js   (BENCH_BATCHES, default 10)
 */
import { createHash } from 'node:crypto'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pkcs11js from 'pkcs11js'
import { initSoftHsm } from '../hardware-sim/softhsm.js'
import { joinTokenAgentAttestor } from '../src/attestors/join-token/agent.js'
import { MemoryKeyManager } from '../src/keymanager/memory.js'
import { Pkcs11KeyManager } from '../src/keymanager/pkcs11/manager.js'
import { Pkcs11Module } from '../src/keymanager/pkcs11/module.js'
import { createCsr } from '../src/spiffe/csr.js'
import { TrustDomain } from '../src/spiffe/id.js'
import { GrpcNodeClient } from '../src/transport/grpc-client.js'
import { startTestServer } from '../test/helpers/server.js'

const BATCHES = Number(process.env.BENCH_BATCHES ?? 10)
const BATCH = 100

/** Milliseconds for BATCHES × BatchNewX509SVID of BATCH CSRs against a server with `toml`. */
async function issue(toml: string): Promise<number> {
  await using s = await startTestServer({ extraToml: toml })
  const td = TrustDomain.parse('example.org')
  const keys = new MemoryKeyManager()
  const agentKey = await keys.generateKey('agent', 'ec-p256')
  const client = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  try {
    const att = await client.attestAgent(joinTokenAgentAttestor(await s.token()), agentKey)
    const auth = { spiffeId: att.svid.spiffeId, chain: att.svid.certChain, signer: agentKey }
    const entry = await s.admin('POST', '/v1/entries', {
      spiffe_id: 'spiffe://example.org/bench',
      parent_id: att.svid.spiffeId,
      selectors: [{ type: 'unix', value: 'uid:0' }],
    })
    const csr = await createCsr(await keys.generateKey('w', 'ec-p256'))
    const params = Array.from({ length: BATCH }, () => ({ entryId: String(entry.id), csr }))
    await client.call('BatchNewX509SVID', { params: params.slice(0, 5) }, auth) // warm up
    const t = performance.now()
    for (let i = 0; i < BATCHES; i++) {
      const r = await client.call('BatchNewX509SVID', { params }, auth)
      if (r.results.some((x) => x.status !== 0)) throw new Error('a signing failed')
    }
    return performance.now() - t
  } finally {
    client.close()
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-bench-p11-'))
  try {
    const token = await initSoftHsm({ stateDir: join(dir, 'hsm'), label: 'bench' })
    process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF
    const pinFile = join(dir, 'pin')
    writeFileSync(pinFile, token.pin, { mode: 0o600 })
    chmodSync(pinFile, 0o600)
    const p11Toml =
      'attest_rate_per_second = 1000\n[plugins.KeyManager.pkcs11]\n' +
      `module_path = "${token.modulePath}"\ntoken_label = "bench"\npin_file = "${pinFile}"\nkey_label_prefix = "srv"\n`
    // The same server with its CA key in a file, in the same run: what the token costs the server.
    const diskMs = await issue('attest_rate_per_second = 1000')
    const serverMs = await issue(p11Toml)
    const n = BATCHES * BATCH
    {
      // Raw: the same CA key object in the same token, pkcs11js straight, one session.
      const mod = Pkcs11Module.acquire(token.modulePath)
      const digest = createHash('sha256').update(new Uint8Array(450).fill(7)).digest()
      const rawMs = await mod.run((p) => {
        const slot = p.C_GetSlotList(true).find((x) => p.C_GetTokenInfo(x).label.trim() === 'bench')
        if (!slot) throw new Error('no token')
        const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION)
        try {
          try {
            p.C_Login(session, pkcs11js.CKU_USER, token.pin)
          } catch (err) {
            if ((err as { code?: number }).code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err
          }
          p.C_FindObjectsInit(session, [
            { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
            { type: pkcs11js.CKA_LABEL, value: 'srv/x509-ca-1' },
          ])
          const [key] = p.C_FindObjects(session, 1)
          p.C_FindObjectsFinal(session)
          if (!key) throw new Error('no CA key in the token')
          const out = Buffer.alloc(64)
          const t0 = performance.now()
          for (let i = 0; i < n; i++) {
            p.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key)
            p.C_Sign(session, digest, out)
          }
          return performance.now() - t0
        } finally {
          p.C_CloseSession(session)
        }
      })
      mod.release()

      // The event loop while 100 signatures run at once through the key manager.
      const km = await Pkcs11KeyManager.open({
        modulePath: token.modulePath,
        token: { label: 'bench' },
        pin: token.pin,
        keyLabelPrefix: 'srv',
      })
      const ca = await km.getKey('x509-ca-1')
      if (!ca) throw new Error('no CA key')
      const hist = monitorEventLoopDelay({ resolution: 1 })
      hist.enable()
      const t = performance.now()
      await Promise.all(Array.from({ length: 100 }, (_, i) => ca.sign(Buffer.from(`m${i}`))))
      const concurrentMs = performance.now() - t
      hist.disable()
      km.close()

      const rate = (ms: number, k = n) => Math.round((k / ms) * 1000)
      console.log(
        `${n} X509-SVIDs in batches of ${BATCH}, CA key (P-256) in SoftHSM2 ${token.modulePath}:`,
      )
      console.log(`  server BatchNewX509SVID        ${rate(serverMs)} SVIDs/s`)
      console.log(`  same, CA key in a disk file    ${rate(diskMs)} SVIDs/s`)
      console.log(`  raw pkcs11js C_Sign, same key  ${rate(rawMs)} signatures/s`)
      console.log(
        `  100 concurrent key manager signatures: ${rate(concurrentMs, 100)} signatures/s, event loop delay max ${(hist.max / 1e6).toFixed(1)} ms, p99 ${(hist.percentile(99) / 1e6).toFixed(1)} ms`,
      )
      console.log(
        `RESULT server SVIDs/s / raw PKCS#11 signatures/s = ${(rawMs / serverMs).toFixed(2)} (goal >= 0.5)`,
      )
      console.log(
        `RESULT server SVIDs/s with the CA key in the token / with the CA key on disk = ${(diskMs / serverMs).toFixed(2)}`,
      )
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
