import assert from 'node:assert/strict'
import type { webcrypto } from 'node:crypto'
import { test } from 'node:test'
import { type Cert, parseCert, verifyEkChain } from '../../src/attestors/tpm/ekcert.js'
import { parsePayload, TpmAttestationError } from '../../src/attestors/tpm/protocol.js'
import { x509 } from '../../src/common/x509.js'

const ecAlg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const
const now = new Date('2027-06-01')
const isChain = (e: unknown) => e instanceof TpmAttestationError && e.reason === 'chain'
const isPayload = (e: unknown) => e instanceof TpmAttestationError && e.reason === 'payload'

async function cert(
  subject: string,
  issuer: string,
  publicKey: webcrypto.CryptoKey,
  signingKey: webcrypto.CryptoKey,
  serial: string,
  isCa: boolean,
): Promise<Cert> {
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject,
    issuer,
    notBefore: new Date('2026-01-01'),
    notAfter: new Date('2046-01-01'),
    signingAlgorithm: ecAlg,
    publicKey,
    signingKey,
    extensions: isCa
      ? [new x509.BasicConstraintsExtension(true, undefined, true)]
      : [new x509.BasicConstraintsExtension(false, undefined, true)],
  })
  return parseCert(new Uint8Array(c.rawData), subject)
}

/**
 * The pathological input: 8 intermediates with one subject and one key, so each issues every
 * other, and a leaf they all issue; nothing reaches the anchor. A depth-first search without
 * loop detection by subject+key and without a budget enumerates every ordering of them.
 */
async function loopChain(): Promise<{ leaf: Cert; mids: Cert[]; anchors: Cert[] }> {
  const key = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const mids: Cert[] = []
  for (let i = 0; i < 8; i++) {
    mids.push(await cert('CN=Loop', 'CN=Loop', key.publicKey, key.privateKey, `1${i}`, true))
  }
  const ek = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const leaf = await cert('CN=EK', 'CN=Loop', ek.publicKey, key.privateKey, '02', false)
  const rootKey = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const root = await cert('CN=Root', 'CN=Root', rootKey.publicKey, rootKey.privateKey, '01', true)
  return { leaf, mids, anchors: [root] }
}

/**
 * CPU time of this process, not wall time: the suite runs files in parallel on two cores, and what
 * the bound protects is the server's CPU. The first chain parse also warms @peculiar/x509 up.
 */
function cpuMs(f: () => void): number {
  const t0 = process.cpuUsage()
  f()
  const d = process.cpuUsage(t0)
  return (d.user + d.system) / 1000
}

test('8 intermediates that issue each other are refused quickly (bounded chain search)', async (t) => {
  const { leaf, mids, anchors } = await loopChain()
  const ms = cpuMs(() => assert.throws(() => verifyEkChain(leaf, mids, anchors, now), isChain))
  t.diagnostic(`looping chain refused in ${ms.toFixed(1)} ms of CPU`)
  assert.ok(ms < 100, `refusing the looping chain took ${ms.toFixed(1)} ms of CPU`)
})

test('many distinct CAs that cross-certify each other hit the signature budget, not the CPU', async (t) => {
  // 12 keys under one name, every one certifying every other: a dense graph of 132 certificates
  // whose searches would otherwise run for minutes.
  const keys: webcrypto.CryptoKeyPair[] = []
  for (let i = 0; i < 12; i++)
    keys.push(await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify']))
  const pool: Cert[] = []
  let serial = 100
  for (const a of keys) {
    for (const b of keys) {
      if (a === b) continue
      pool.push(await cert('CN=Mesh', 'CN=Mesh', a.publicKey, b.privateKey, `${serial++}`, true))
    }
  }
  const ek = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const leaf = await cert('CN=EK', 'CN=Mesh', ek.publicKey, keys[0]!.privateKey, '02', false)
  const rootKey = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const root = await cert('CN=Root', 'CN=Root', rootKey.publicKey, rootKey.privateKey, '01', true)
  const ms = cpuMs(() => assert.throws(() => verifyEkChain(leaf, pool, [root], now), isChain))
  t.diagnostic(`mesh refused in ${ms.toFixed(1)} ms of CPU`)
  assert.ok(ms < 100, `refusing the mesh took ${ms.toFixed(1)} ms of CPU`)
})

test('a good chain still verifies, and a resent anchor or duplicate intermediate is harmless', async () => {
  const rootKey = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const root = await cert('CN=Root', 'CN=Root', rootKey.publicKey, rootKey.privateKey, '01', true)
  const midKey = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const mid = await cert('CN=Mid', 'CN=Root', midKey.publicKey, rootKey.privateKey, '03', true)
  const ek = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const leaf = await cert('CN=EK', 'CN=Mid', ek.publicKey, midKey.privateKey, '02', false)
  const v = verifyEkChain(leaf, [mid, mid, root], [root], now)
  assert.deepEqual(
    v.path.map((c) => c.sha256),
    [leaf.sha256, mid.sha256, root.sha256],
  )
})

test('the payload caps the number and size of EK certificates before decoding them', () => {
  const b64 = (n: number) => Buffer.alloc(n, 0x30).toString('base64')
  const payload = (o: Record<string, unknown>) =>
    new Uint8Array(
      Buffer.from(
        JSON.stringify({
          version: 1,
          ek_public: 'AAAA',
          ak_public: 'AAAA',
          agent_key_public: 'AAAA',
          ...o,
        }),
      ),
    )
  parsePayload(
    payload({ ek_cert: b64(8 * 1024), ek_chain: [b64(100), b64(100), b64(100), b64(100)] }),
  )
  assert.throws(() => parsePayload(payload({ ek_cert: b64(8 * 1024 + 1) })), isPayload)
  assert.throws(() => parsePayload(payload({ ek_chain: [b64(8 * 1024 + 1)] })), isPayload)
  assert.throws(
    () => parsePayload(payload({ ek_chain: [b64(10), b64(10), b64(10), b64(10), b64(10)] })),
    isPayload,
  )
})
