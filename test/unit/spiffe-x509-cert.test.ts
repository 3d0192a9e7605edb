/**
 * The small certificate reader (src/spiffe/x509-cert.ts) against @peculiar/x509, which the agent
 * used before: the same serial, validity, key, extensions, basic constraints, key usage and URI
 * SANs on certificates of every shape SPIFFE rules look at.
 */
import assert from 'node:assert/strict'
import { createHash, webcrypto } from 'node:crypto'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { SvidError } from '../../src/spiffe/errors.js'
import {
  basicConstraints,
  isCa,
  KU,
  keyUsage,
  parseCert,
  readCert,
  uriSans,
} from '../../src/spiffe/x509-cert.js'

const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
const keys = (await webcrypto.subtle.generateKey(alg, true, [
  'sign',
  'verify',
])) as webcrypto.CryptoKeyPair

async function make(opts: {
  serial: string
  notBefore: Date
  notAfter: Date
  extensions: InstanceType<typeof x509.Extension>[]
}): Promise<Uint8Array> {
  const c = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: opts.serial,
      name: 'CN=test',
      notBefore: opts.notBefore,
      notAfter: opts.notAfter,
      keys,
      signingAlgorithm: alg,
      extensions: opts.extensions,
    },
    webcrypto as never,
  )
  return new Uint8Array(c.rawData)
}

function peculiarView(der: Uint8Array) {
  const c = new x509.X509Certificate(der)
  const bc = c.getExtension(x509.BasicConstraintsExtension)
  const san = c.getExtension(x509.SubjectAlternativeNameExtension)
  return {
    serialNumber: c.serialNumber,
    notBefore: c.notBefore.getTime(),
    notAfter: c.notAfter.getTime(),
    spki: Buffer.from(c.publicKey.rawData).toString('hex'),
    extensions: [...c.extensions].map((e) => ({ type: e.type, critical: e.critical })),
    basic:
      bc === null
        ? undefined
        : bc.pathLength === undefined
          ? { ca: bc.ca }
          : { ca: bc.ca, pathLength: bc.pathLength },
    usages: c.getExtension(x509.KeyUsagesExtension)?.usages,
    uris:
      san === null
        ? []
        : san.names
            .toJSON()
            .filter((n) => n.type === 'url')
            .map((n) => n.value),
  }
}

function ownView(der: Uint8Array) {
  const c = readCert(der)
  return {
    serialNumber: c.serialNumber,
    notBefore: c.notBefore.getTime(),
    notAfter: c.notAfter.getTime(),
    spki: Buffer.from(c.spki).toString('hex'),
    extensions: [...c.extensions].map((e) => ({ type: e.type, critical: e.critical })),
    basic: basicConstraints(c),
    usages: keyUsage(c),
    uris: uriSans(c),
  }
}

const d = (s: string) => new Date(s)
const cases: [string, Parameters<typeof make>[0]][] = [
  [
    'a SPIFFE leaf (UTCTime, critical key usage, one URI SAN among DNS names)',
    {
      serial: '01',
      notBefore: d('2026-06-01T00:00:00Z'),
      notAfter: d('2026-06-02T00:00:00Z'),
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          KU.digitalSignature | KU.keyEncipherment | KU.keyAgreement,
          true,
        ),
        new x509.SubjectAlternativeNameExtension([
          { type: 'dns', value: 'a.example' },
          { type: 'url', value: 'spiffe://example.org/web' },
          { type: 'dns', value: 'b.example' },
        ]),
      ],
    },
  ],
  [
    'a CA with a path length (GeneralizedTime past 2049, high-bit serial)',
    {
      serial: '80ff00aa',
      notBefore: d('1999-12-31T23:59:59Z'),
      notAfter: d('2051-01-01T00:00:00Z'),
      extensions: [
        new x509.BasicConstraintsExtension(true, 3, true),
        new x509.KeyUsagesExtension(KU.keyCertSign | KU.cRLSign, true),
        new x509.SubjectAlternativeNameExtension([
          { type: 'url', value: 'spiffe://example.org' },
          { type: 'url', value: 'https://example.org/x' },
        ]),
        new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1'], true),
      ],
    },
  ],
  [
    'every key usage bit, no basic constraints, no SAN',
    {
      serial: '7f',
      notBefore: d('2049-12-31T23:59:59Z'),
      notAfter: d('2050-01-01T00:00:00Z'),
      extensions: [new x509.KeyUsagesExtension(511 as x509.KeyUsageFlags, false)],
    },
  ],
  [
    'no extensions at all',
    {
      serial: '00ab',
      notBefore: d('2026-01-01T00:00:00Z'),
      notAfter: d('2027-01-01T00:00:00Z'),
      extensions: [],
    },
  ],
]

for (const [name, opts] of cases) {
  test(`readCert reads what @peculiar/x509 reads: ${name}`, async () => {
    const der = await make(opts)
    assert.deepEqual(ownView(der), peculiarView(der))
  })
}

test('every single key usage bit reads as @peculiar/x509 reads it', async () => {
  for (let b = 0; b < 9; b++) {
    const der = await make({
      serial: '02',
      notBefore: d('2026-01-01T00:00:00Z'),
      notAfter: d('2027-01-01T00:00:00Z'),
      extensions: [new x509.KeyUsagesExtension(1 << b, true)],
    })
    assert.equal(keyUsage(readCert(der)), 1 << b)
    assert.equal(keyUsage(readCert(der)), peculiarView(der).usages)
  }
})

test('isCa needs cA=true and, with a key usage, keyCertSign', async () => {
  const at = {
    serial: '03',
    notBefore: d('2026-01-01T00:00:00Z'),
    notAfter: d('2027-01-01T00:00:00Z'),
  }
  const ca = await make({ ...at, extensions: [new x509.BasicConstraintsExtension(true)] })
  const noSign = await make({
    ...at,
    extensions: [new x509.BasicConstraintsExtension(true), new x509.KeyUsagesExtension(KU.cRLSign)],
  })
  const leaf = await make({ ...at, extensions: [new x509.BasicConstraintsExtension(false)] })
  assert.equal(isCa(readCert(ca)), true)
  assert.equal(isCa(readCert(noSign)), false)
  assert.equal(isCa(readCert(leaf)), false)
})

test('the subject key bits hash to @peculiar/x509 key identifier', async () => {
  const der = await make({
    serial: '04',
    notBefore: d('2026-01-01T00:00:00Z'),
    notAfter: d('2027-01-01T00:00:00Z'),
    extensions: [],
  })
  const want = Buffer.from(
    await new x509.X509Certificate(der).publicKey.getKeyIdentifier(webcrypto as never),
  )
  assert.deepEqual(createHash('sha1').update(readCert(der).subjectPublicKey).digest(), want)
})

test('truncated or trailing bytes are refused as an SvidError', async () => {
  const der = await make({
    serial: '05',
    notBefore: d('2026-01-01T00:00:00Z'),
    notAfter: d('2027-01-01T00:00:00Z'),
    extensions: [new x509.BasicConstraintsExtension(true, 1, true)],
  })
  for (const bad of [
    der.subarray(0, der.length - 1),
    Buffer.concat([der, Buffer.of(0)]),
    der.subarray(0, 40),
  ]) {
    assert.throws(() => readCert(new Uint8Array(bad)), SvidError)
    assert.throws(
      () => parseCert(new Uint8Array(bad), 'leaf'),
      /leaf is not a DER X.509 certificate/,
    )
  }
})

test('a repeated extension is refused (two SANs cannot name two identities)', async () => {
  const der = await make({
    serial: '06',
    notBefore: d('2026-01-01T00:00:00Z'),
    notAfter: d('2027-01-01T00:00:00Z'),
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'spiffe://a.test/one' }]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'spiffe://a.test/two' }]),
    ],
  })
  assert.throws(() => readCert(der), /2\.5\.29\.17 appears more than once/)
  assert.throws(() => parseCert(der, 'leaf'), /leaf is not a DER X.509 certificate/)
})
