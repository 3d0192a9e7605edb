import assert from 'node:assert/strict'
import { generateKeyPairSync, type webcrypto } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { splitDerCertificates } from '../../src/attestors/tpm/agent-ek.js'
import {
  certSpki,
  parseCert,
  tpmDeviceAttributes,
  verifyEkChain,
} from '../../src/attestors/tpm/ekcert.js'
import {
  encodeChallenge,
  encodePayload,
  encodeResponse,
  parseChallenge,
  parsePayload,
  parseResponse,
  TpmAttestationError,
} from '../../src/attestors/tpm/protocol.js'
import { parseTpmServerConfig, tpmServerAttestor } from '../../src/attestors/tpm/server.js'
import { x509 } from '../../src/common/x509.js'

const bytes = (n: number, fill = 1) => new Uint8Array(n).fill(fill)
const json = (o: unknown) => new Uint8Array(Buffer.from(JSON.stringify(o)))
const reason = (r: string) => (e: unknown) =>
  e instanceof TpmAttestationError && e.code === 'ERR_ATTESTATION_FAILED' && e.reason === r

test('payload, challenge and response round-trip through their wire form', () => {
  const p = {
    version: 1 as const,
    ekCert: bytes(10, 2),
    ekChain: [bytes(3, 3), bytes(4, 4)],
    ekPublic: bytes(5),
    akPublic: bytes(6),
    agentKeyPublic: bytes(7),
  }
  assert.deepEqual(parsePayload(encodePayload(p)), p)
  const wire = JSON.parse(Buffer.from(encodePayload(p)).toString()) as Record<string, unknown>
  assert.deepEqual(Object.keys(wire).sort(), [
    'agent_key_public',
    'ak_public',
    'ek_cert',
    'ek_chain',
    'ek_public',
    'version',
  ])
  const noCert = {
    version: 1 as const,
    ekPublic: bytes(5),
    akPublic: bytes(6),
    agentKeyPublic: bytes(7),
  }
  assert.deepEqual(parsePayload(encodePayload(noCert)), noCert)
  const c = {
    version: 1 as const,
    credentialBlob: bytes(50),
    encryptedSecret: bytes(60),
    nonce: bytes(32),
    pcrs: 'sha256:0,1,7',
  }
  assert.deepEqual(parseChallenge(encodeChallenge(c)), c)
  const r = {
    version: 1 as const,
    secret: bytes(32),
    quoteMessage: bytes(100),
    quoteSignature: bytes(70),
    pcrValues: { sha256: { '0': '00'.repeat(32), '7': 'ab'.repeat(32) } },
    certifyMessage: bytes(90),
    certifySignature: bytes(70),
  }
  assert.deepEqual(parseResponse(encodeResponse(r)), r)
})

test('malformed payloads and responses are refused with payload/response reasons', () => {
  const good = JSON.parse(
    Buffer.from(
      encodePayload({
        version: 1,
        ekPublic: bytes(5),
        akPublic: bytes(6),
        agentKeyPublic: bytes(7),
      }),
    ).toString(),
  ) as Record<string, unknown>
  for (const [name, bad] of [
    ['not JSON', new Uint8Array(Buffer.from('{'))],
    ['not UTF-8', Uint8Array.from([0xff, 0xfe])],
    ['an array', json([1])],
    ['version 2', json({ ...good, version: 2 })],
    ['unknown field', json({ ...good, surprise: true })],
    ['missing ak_public', json({ ...good, ak_public: undefined })],
    ['not base64', json({ ...good, ek_public: 'a b' })],
    ['base64 with bad padding', json({ ...good, ek_public: 'abc' })],
    // 'BR==' decodes to the byte 'BQ==' encodes: only the canonical text is taken.
    ['base64 with stray bits', json({ ...good, ek_public: 'BR==' })],
    ['base64url', json({ ...good, ek_public: 'a-_b' })],
    ['base64 padding inside', json({ ...good, ek_public: 'AA==AAAA' })],
    ['chain not an array', json({ ...good, ek_chain: 'AAAA' })],
    ['chain too long', json({ ...good, ek_chain: Array(9).fill('AAAA') })],
    ['huge', new Uint8Array(70 * 1024).fill(0x20)],
  ] as const) {
    assert.throws(() => parsePayload(bad), reason('payload'), name)
  }
  const r = JSON.parse(
    Buffer.from(
      encodeResponse({
        version: 1,
        secret: bytes(32),
        quoteMessage: bytes(4),
        quoteSignature: bytes(4),
        pcrValues: {},
        certifyMessage: bytes(4),
        certifySignature: bytes(4),
      }),
    ).toString(),
  ) as Record<string, unknown>
  for (const pcrValues of [
    [],
    { sha256: { '24': '00' } },
    { sha256: { '1': 'XYZ' } },
    { sha256: { '01': '00' } },
    { sha256: { '1': 'AB' } },
    { sha256: { '1': '0' } },
    { sha256: { '1': '' } },
    { sha256: { '1': '00'.repeat(65) } },
    { 'SHA-256': { '1': '00' } },
  ]) {
    assert.throws(
      () => parseResponse(json({ ...r, pcr_values: pcrValues })),
      reason('response'),
      JSON.stringify(pcrValues),
    )
  }
  assert.throws(
    () =>
      parseChallenge(
        json({
          version: 1,
          credential_blob: 'AAAA',
          encrypted_secret: 'AAAA',
          nonce: Buffer.alloc(33).toString('base64'),
          pcrs: 'sha256:0',
        }),
      ),
    reason('challenge'),
  )
})

const ecAlg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const
const rsaAlg = {
  name: 'RSASSA-PKCS1-v1_5',
  hash: 'SHA-256',
  publicExponent: new Uint8Array([1, 0, 1]),
  modulusLength: 2048,
} as const
const TPM_SAN = '2.23.133.2.1=id:49465800, 2.23.133.2.2=SLB9670, 2.23.133.2.3=id:0007003D'

async function ca(
  name: string,
  issuer?: { name: string; keys: webcrypto.CryptoKeyPair },
  caFlag = true,
) {
  const keys = await crypto.subtle.generateKey(ecAlg, true, ['sign', 'verify'])
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: name,
    issuer: issuer?.name ?? name,
    notBefore: new Date('2026-01-01'),
    notAfter: new Date('2046-01-01'),
    signingAlgorithm: ecAlg,
    publicKey: keys.publicKey,
    signingKey: (issuer?.keys ?? keys).privateKey,
    extensions: caFlag
      ? [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
        ]
      : [],
  })
  return { name, keys, der: new Uint8Array(cert.rawData) }
}

async function ekCert(
  issuer: { name: string; keys: webcrypto.CryptoKeyPair },
  opts: { eku?: string; notAfter?: Date; san?: string } = {},
) {
  const ek = await crypto.subtle.generateKey(rsaAlg, true, ['sign', 'verify'])
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: '',
    issuer: issuer.name,
    notBefore: new Date('2026-01-01'),
    notAfter: opts.notAfter ?? new Date('2046-01-01'),
    signingAlgorithm: ecAlg,
    publicKey: ek.publicKey,
    signingKey: issuer.keys.privateKey,
    // The EK profile's quirks: a critical SAN of TPM attributes, the EK EKU, keyEncipherment only.
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: 'dn', value: opts.san ?? TPM_SAN }], true),
      new x509.ExtendedKeyUsageExtension([opts.eku ?? '2.23.133.8.1']),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
      new x509.BasicConstraintsExtension(false, undefined, true),
    ],
  })
  return new Uint8Array(cert.rawData)
}

const now = new Date('2027-06-01')

test('TPM attributes come from the EK certificate SAN directoryName', async () => {
  const root = await ca('CN=Root')
  const cert = parseCert(await ekCert(root), 'ek')
  assert.deepEqual(tpmDeviceAttributes(cert.info), {
    manufacturer: 'id:49465800',
    model: 'SLB9670',
    version: 'id:0007003D',
  })
  const partial = parseCert(await ekCert(root, { san: '2.23.133.2.2=Model X' }), 'ek')
  assert.deepEqual(tpmDeviceAttributes(partial.info), { model: 'Model X' })
  // No SAN at all: no attributes (and no error).
  assert.deepEqual(tpmDeviceAttributes(parseCert(root.der, 'root').info), {})
})

test('EK chains verify through intermediates to a configured root, with TPM quirks accepted', async () => {
  const root = await ca('CN=Root')
  const mid = await ca('CN=Intermediate', root)
  const leaf = parseCert(await ekCert(mid), 'ek')
  const anchors = [parseCert(root.der, 'root')]
  const v = verifyEkChain(leaf, [parseCert(mid.der, 'mid')], anchors, now)
  assert.equal(v.path.length, 3)
  assert.equal(v.issuer.sha256, parseCert(mid.der, 'mid').sha256)
  assert.equal(certSpki(leaf).length > 200, true)
  // An intermediate configured as an anchor is enough on its own.
  assert.equal(verifyEkChain(leaf, [], [parseCert(mid.der, 'mid')], now).path.length, 2)
  // Without the intermediate, or against another root: chain.
  assert.throws(() => verifyEkChain(leaf, [], anchors, now), reason('chain'))
  const other = await ca('CN=Root')
  assert.throws(
    () => verifyEkChain(leaf, [parseCert(mid.der, 'mid')], [parseCert(other.der, 'o')], now),
    reason('chain'),
  )
  // Expired, and before validity.
  assert.throws(
    () => verifyEkChain(leaf, [parseCert(mid.der, 'mid')], anchors, new Date('2050-01-01')),
    reason('chain'),
  )
  const expired = parseCert(await ekCert(root, { notAfter: new Date('2027-01-01') }), 'ek')
  assert.throws(() => verifyEkChain(expired, [], anchors, now), reason('chain'))
  // An EKU without the EK certificate purpose.
  const tls = parseCert(await ekCert(root, { eku: '1.3.6.1.5.5.7.3.1' }), 'ek')
  assert.throws(() => verifyEkChain(tls, [], anchors, now), reason('chain'))
  // An "intermediate" that is not a CA cannot sign EK certificates.
  const notCa = await ca('CN=Not a CA', root, false)
  const byNotCa = parseCert(await ekCert(notCa), 'ek')
  assert.throws(
    () => verifyEkChain(byNotCa, [parseCert(notCa.der, 'x')], anchors, now),
    reason('chain'),
  )
  assert.throws(() => verifyEkChain(leaf, [], [], now), reason('chain'))
})

test('NV chain indices may hold several DER certificates followed by padding', async () => {
  const root = await ca('CN=Root')
  const mid = await ca('CN=Intermediate', root)
  const nv = new Uint8Array(root.der.length + mid.der.length + 40).fill(0xff)
  nv.set(mid.der)
  nv.set(root.der, mid.der.length)
  const certs = splitDerCertificates(nv)
  assert.equal(certs.length, 2)
  assert.deepEqual(certs[0], mid.der)
  assert.deepEqual(certs[1], root.der)
})

test('server config fails closed and merges the PCR policy into the quoted selection', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-tpm-unit-'))
  try {
    const root = await ca('CN=Root')
    const pem = new x509.X509Certificate(root.der).toString('pem')
    writeFileSync(join(dir, 'ca.pem'), pem)
    writeFileSync(join(dir, 'empty.pem'), '')
    const hash = 'ab'.repeat(32)
    const cfg = parseTpmServerConfig(
      {
        ek_ca_bundle: 'ca.pem',
        pcr_selection: 'sha256:0,1',
        pcr_policy: { 'sha256:7': ['00'.repeat(32)], 'sha1:0': ['11'.repeat(20)] },
      },
      dir,
    )
    assert.equal(cfg.caCertificates.length, 1)
    assert.equal(cfg.requireEkCert, true)
    assert.deepEqual(cfg.pcrSelection, [
      { hashAlg: 0x0b, pcrs: [0, 1, 7] },
      { hashAlg: 0x04, pcrs: [0] },
    ])
    const hashes = parseTpmServerConfig({ ek_hashes: [hash.toUpperCase()] }, dir)
    assert.equal(hashes.requireEkCert, false)
    assert.ok(hashes.ekHashes.has(hash))
    for (const bad of [
      {},
      { ek_ca_bundle: 'missing.pem' },
      { ek_ca_bundle: 'empty.pem' },
      { ek_ca_dir: 'nope' },
      { ek_hashes: [] },
      { ek_hashes: ['xyz'] },
      { ek_hashes: [hash], require_ek_cert: true },
      { ek_ca_bundle: 'ca.pem', pcr_selection: 'sha999:1' },
      { ek_ca_bundle: 'ca.pem', pcr_policy: { 'sha256:7': ['00'] } },
      { ek_ca_bundle: 'ca.pem', pcr_policy: { 'sha256:0,1': ['00'.repeat(32)] } },
      { ek_ca_bundle: 'ca.pem', pcr_policy: { 'sha256:7': [] } },
      { ek_ca_bundle: 'ca.pem', typo: 1 },
    ]) {
      assert.throws(
        () => parseTpmServerConfig(bad, dir),
        { code: 'ERR_CONFIG' },
        JSON.stringify(bad),
      )
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('an attestor with nothing trusted refuses everyone (defence in depth)', async () => {
  const attestor = tpmServerAttestor({
    caCertificates: [],
    ekHashes: new Set(),
    pcrSelection: [],
    pcrPolicy: new Map(),
    requireEkCert: false,
  })
  await assert.rejects(
    attestor.attest(new Uint8Array(), async () => new Uint8Array(), {
      trustDomain: 'example.org',
      now,
      agentPublicKey: generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey,
      state: { get: async () => undefined, set: async () => {} },
    }),
    reason('config'),
  )
})
