import assert from 'node:assert/strict'
import type { webcrypto } from 'node:crypto'
import { test } from 'node:test'
import { x509 } from '../../src/common/x509.js'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { type Key, type Signer, webCryptoAlgorithm } from '../../src/keymanager/types.js'
import { X509Bundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { signerCrypto, signerCryptoKey } from '../../src/spiffe/webcrypto.js'
import { issueX509Ca, issueX509Svid, validateX509Svid } from '../../src/spiffe/x509-svid.js'

type X509Crypto = Parameters<typeof x509.X509CertificateGenerator.create>[1]
type CreateParams = Parameters<typeof x509.X509CertificateGenerator.create>[0]
type SigningKey = Extract<CreateParams, { signingKey: unknown }>['signingKey']
type Cert = InstanceType<typeof x509.X509Certificate>

const KU = x509.KeyUsageFlags
const td = TrustDomain.parse('example.org')
const otherTd = TrustDomain.parse('other.org')
const t0 = new Date('2026-06-01T00:00:00Z')
const hours = (h: number) => new Date(t0.getTime() + h * 3600_000)
const now = hours(1)
const km = new MemoryKeyManager()

interface Ca {
  key: Key
  der: Uint8Array
}

async function root(id: string, trust = td, notAfter = hours(48)): Promise<Ca> {
  const key = await km.generateKey(id, 'ec-p256')
  const der = await issueX509Ca({
    subjectPublicKey: key.publicKey,
    trustDomain: trust,
    selfSigner: key,
    notBefore: t0,
    notAfter,
  })
  return { key, der }
}

const rootCa = await root('root')
const interKey = await km.generateKey('inter', 'rsa-2048')
const interDer = await issueX509Ca({
  subjectPublicKey: interKey.publicKey,
  trustDomain: td,
  issuer: { certificate: rootCa.der, signer: rootCa.key },
  notBefore: t0,
  notAfter: hours(24),
})
const inter: Ca = { key: interKey, der: interDer }
const leafEc = await km.generateKey('leaf-ec', 'ec-p256')
const leafRsa = await km.generateKey('leaf-rsa', 'rsa-2048')
const workload = SpiffeId.parse('spiffe://example.org/ns/prod/sa/api')

const bundles =
  (...cas: Ca[]) =>
  (t: TrustDomain) =>
    t.equals(td)
      ? new X509Bundle(
          td,
          cas.map((c) => c.der),
        )
      : undefined

async function svid(issuer: Ca, key: Key = leafEc, extra: { dnsNames?: string[] } = {}) {
  return issueX509Svid({
    subjectPublicKey: key.publicKey,
    spiffeId: workload,
    issuer: { certificate: issuer.der, signer: issuer.key },
    notBefore: t0,
    notAfter: hours(2),
    ...extra,
  })
}

/** A certificate with arbitrary extensions, for shapes issueX509Svid refuses to produce. */
async function craft(
  issuer: { name: string; signer: Signer },
  subject: Signer,
  extensions: InstanceType<typeof x509.Extension>[],
  name = 'CN=crafted',
): Promise<Uint8Array> {
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: '0a',
      subject: name,
      issuer: issuer.name,
      notBefore: t0,
      notAfter: hours(2),
      publicKey: new Uint8Array(subject.publicKey.export({ type: 'spki', format: 'der' })),
      signingKey: signerCryptoKey(issuer.signer) as unknown as SigningKey,
      signingAlgorithm: webCryptoAlgorithm(issuer.signer.keyType),
      extensions,
    },
    signerCrypto(issuer.signer) as unknown as X509Crypto,
  )
  return new Uint8Array(cert.rawData)
}

const asRootIssuer = () => ({
  name: new x509.X509Certificate(rootCa.der).subject,
  signer: rootCa.key,
})
const sanUri = (...uris: string[]) =>
  new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: 'url' as const, value })))
const bc = (ca: boolean, pathLen?: number) => new x509.BasicConstraintsExtension(ca, pathLen, true)
const ku = (flags: number) => new x509.KeyUsagesExtension(flags, true)

function ext<T extends InstanceType<typeof x509.Extension>>(
  c: Cert,
  type: new (raw: webcrypto.BufferSource) => T,
): T {
  const e = c.getExtension(type)
  assert.ok(e, type.name)
  return e
}

test('a self-signed root CA follows the X509-SVID signing certificate rules', () => {
  const c = new x509.X509Certificate(rootCa.der)
  assert.equal(c.subject, c.issuer)
  const b = ext(c, x509.BasicConstraintsExtension)
  assert.equal(b.ca, true)
  assert.equal(b.critical, true)
  const k = ext(c, x509.KeyUsagesExtension)
  assert.equal(k.usages, KU.keyCertSign | KU.cRLSign)
  assert.equal(k.critical, true)
  const san = ext(c, x509.SubjectAlternativeNameExtension).names.toJSON()
  assert.deepEqual(san, [{ type: 'url', value: 'spiffe://example.org' }])
  assert.ok(c.getExtension(x509.SubjectKeyIdentifierExtension))
  assert.equal(c.getExtension(x509.AuthorityKeyIdentifierExtension), null)
  assert.equal(c.notBefore.getTime(), t0.getTime())
})

test('an intermediate CA carries AKI = issuer SKI and is clamped to the issuer', async () => {
  const c = new x509.X509Certificate(inter.der)
  const r = new x509.X509Certificate(rootCa.der)
  assert.equal(
    ext(c, x509.AuthorityKeyIdentifierExtension).keyId,
    ext(r, x509.SubjectKeyIdentifierExtension).keyId,
  )
  assert.equal(c.issuer, r.subject)
  assert.notEqual(c.subject, r.subject)
  const long = await issueX509Ca({
    subjectPublicKey: interKey.publicKey,
    trustDomain: td,
    issuer: { certificate: rootCa.der, signer: rootCa.key },
    notBefore: t0,
    notAfter: hours(1000),
    serial: 7n,
  })
  const lc = new x509.X509Certificate(long)
  assert.equal(lc.notAfter.getTime(), r.notAfter.getTime())
  assert.equal(lc.serialNumber, '07')
})

test('a leaf X509-SVID has one URI SAN, CA:false, critical KU and both EKUs', async () => {
  for (const [key, usages] of [
    [leafEc, KU.digitalSignature],
    [leafRsa, KU.digitalSignature | KU.keyEncipherment],
  ] as const) {
    const c = new x509.X509Certificate(await svid(inter, key, { dnsNames: ['api.example.org'] }))
    const b = ext(c, x509.BasicConstraintsExtension)
    assert.equal(b.ca, false)
    assert.equal(b.critical, true)
    const k = ext(c, x509.KeyUsagesExtension)
    assert.equal(k.usages, usages)
    assert.equal(k.critical, true)
    assert.deepEqual(
      [...ext(c, x509.ExtendedKeyUsageExtension).usages],
      [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    )
    assert.deepEqual(ext(c, x509.SubjectAlternativeNameExtension).names.toJSON(), [
      { type: 'url', value: workload.toString() },
      { type: 'dns', value: 'api.example.org' },
    ])
    assert.equal(
      ext(c, x509.AuthorityKeyIdentifierExtension).keyId,
      ext(new x509.X509Certificate(inter.der), x509.SubjectKeyIdentifierExtension).keyId,
    )
    assert.ok(c.getExtension(x509.SubjectKeyIdentifierExtension))
    assert.match(c.subject, /CN=api\.example\.org/)
  }
  const plain = new x509.X509Certificate(await svid(rootCa))
  assert.doesNotMatch(plain.subject, /CN=/)
  assert.match(plain.subject, /O=SPIRE/)
})

test('SVID notAfter is clamped to the issuer notAfter', async () => {
  const der = await issueX509Svid({
    subjectPublicKey: leafEc.publicKey,
    spiffeId: workload,
    issuer: { certificate: inter.der, signer: inter.key },
    notBefore: t0,
    notAfter: hours(500),
  })
  assert.equal(new x509.X509Certificate(der).notAfter.getTime(), hours(24).getTime())
})

test('issuance refuses inputs that would make a bad SVID', async () => {
  const base = {
    subjectPublicKey: leafEc.publicKey,
    spiffeId: workload,
    issuer: { certificate: inter.der, signer: inter.key },
    notBefore: t0,
    notAfter: hours(2),
  }
  const notCa = await svid(inter)
  const bad: [string, () => Promise<unknown>][] = [
    ['root ID', () => issueX509Svid({ ...base, spiffeId: td.id() })],
    [
      'other TD',
      () => issueX509Svid({ ...base, spiffeId: SpiffeId.parse('spiffe://other.org/x') }),
    ],
    [
      'signer mismatch',
      () => issueX509Svid({ ...base, issuer: { certificate: inter.der, signer: leafEc } }),
    ],
    [
      'issuer not a CA',
      () => issueX509Svid({ ...base, issuer: { certificate: notCa, signer: leafEc } }),
    ],
    ['not after before', () => issueX509Svid({ ...base, notAfter: t0 })],
    ['bad DNS name', () => issueX509Svid({ ...base, dnsNames: ['bad name'] })],
    [
      'issuer garbage',
      () =>
        issueX509Svid({ ...base, issuer: { certificate: new Uint8Array([1]), signer: inter.key } }),
    ],
    [
      'both issuer and selfSigner',
      () =>
        issueX509Ca({
          subjectPublicKey: leafEc.publicKey,
          trustDomain: td,
          issuer: base.issuer,
          selfSigner: leafEc,
          notBefore: t0,
          notAfter: hours(1),
        }),
    ],
    [
      'selfSigner of another key',
      () =>
        issueX509Ca({
          subjectPublicKey: leafEc.publicKey,
          trustDomain: td,
          selfSigner: leafRsa,
          notBefore: t0,
          notAfter: hours(1),
        }),
    ],
    [
      'CA for another trust domain',
      () =>
        issueX509Ca({
          subjectPublicKey: leafEc.publicKey,
          trustDomain: otherTd,
          issuer: base.issuer,
          notBefore: t0,
          notAfter: hours(1),
        }),
    ],
    ['zero serial', () => issueX509Svid({ ...base, serial: 0n })],
  ]
  for (const [name, p] of bad) await assert.rejects(p(), { code: 'ERR_SVID_INVALID' }, name)
})

test('valid chains validate: leaf under root, leaf under an intermediate', async () => {
  const direct = await svid(rootCa)
  const r1 = validateX509Svid([direct], bundles(rootCa), now)
  assert.ok(r1.spiffeId.equals(workload))
  assert.equal(r1.path.length, 2)
  // The leaf's fields as @peculiar/x509 reads them (the validator reads them with der.ts).
  const peculiarLeaf = new x509.X509Certificate(direct)
  assert.equal(r1.leaf.serialNumber, peculiarLeaf.serialNumber)
  assert.deepEqual(Buffer.from(r1.leaf.spki), Buffer.from(peculiarLeaf.publicKey.rawData))
  assert.equal(r1.leaf.notAfter.getTime(), peculiarLeaf.notAfter.getTime())
  const viaInter = await svid(inter, leafRsa)
  const r2 = validateX509Svid([viaInter, inter.der], bundles(rootCa), now)
  assert.ok(r2.spiffeId.equals(workload))
  assert.deepEqual(r2.path, [viaInter, inter.der, rootCa.der])
  // A bundle that holds several authorities (rotation) still finds the right one.
  const other = await root('root-2')
  assert.ok(validateX509Svid([viaInter, inter.der], bundles(other, rootCa), now))
  // The intermediate itself being in the bundle shortens the path.
  assert.equal(validateX509Svid([viaInter], bundles(inter), now).path.length, 2)
})

test('validation rejects bad chains with ERR_SVID_INVALID', async () => {
  const good = await svid(inter)
  const untrusted = await root('root-untrusted')
  const otherRoot = await root('root-other', otherTd)
  const rootIssuer = asRootIssuer()
  const leafId = sanUri(workload.toString())
  const common = [
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    await x509.SubjectKeyIdentifierExtension.create(
      new Uint8Array(leafEc.publicKey.export({ type: 'spki', format: 'der' })),
    ),
  ]
  const smallRootKey = await km.generateKey('root-pathlen', 'ec-p256')
  const pathLenRootDer = await craft(
    { name: 'CN=pathlen root', signer: smallRootKey },
    smallRootKey,
    [bc(true, 0), ku(KU.keyCertSign), sanUri('spiffe://example.org')],
    'CN=pathlen root',
  )
  const pathLenRoot: Ca = { key: smallRootKey, der: pathLenRootDer }
  const interUnderPathLen = await issueX509Ca({
    subjectPublicKey: interKey.publicKey,
    trustDomain: td,
    issuer: { certificate: pathLenRootDer, signer: smallRootKey },
    notBefore: t0,
    notAfter: hours(24),
  })
  const leafUnderPathLen = await svid({ key: interKey, der: interUnderPathLen })
  const cases: [string, Uint8Array[], ReturnType<typeof bundles>, Date?][] = [
    ['empty chain', [], bundles(rootCa)],
    ['garbage', [new Uint8Array([0x30, 0x03, 1, 2, 3])], bundles(rootCa)],
    ['no bundle for the TD', [good, inter.der], () => undefined],
    ['bundle of another TD', [good, inter.der], () => new X509Bundle(otherTd, [otherRoot.der])],
    ['untrusted root', [good, inter.der], bundles(untrusted)],
    ['missing intermediate', [good], bundles(rootCa)],
    ['expired', [good, inter.der], bundles(rootCa), hours(3)],
    ['not yet valid', [good, inter.der], bundles(rootCa), hours(-1)],
    ['CA as leaf', [inter.der], bundles(rootCa)],
    [
      'two URI SANs',
      [
        await craft(rootIssuer, leafEc, [
          bc(false),
          ku(KU.digitalSignature),
          sanUri(workload.toString(), 'spiffe://example.org/two'),
          ...common,
        ]),
      ],
      bundles(rootCa),
    ],
    [
      'no URI SAN',
      [await craft(rootIssuer, leafEc, [bc(false), ku(KU.digitalSignature), ...common])],
      bundles(rootCa),
    ],
    [
      'non-SPIFFE URI SAN',
      [
        await craft(rootIssuer, leafEc, [
          bc(false),
          ku(KU.digitalSignature),
          sanUri('https://example.org/x'),
        ]),
      ],
      bundles(rootCa),
    ],
    [
      'root ID in a leaf',
      [
        await craft(rootIssuer, leafEc, [
          bc(false),
          ku(KU.digitalSignature),
          sanUri('spiffe://example.org'),
        ]),
      ],
      bundles(rootCa),
    ],
    [
      'leaf with keyCertSign',
      [
        await craft(rootIssuer, leafEc, [
          bc(false),
          ku(KU.digitalSignature | KU.keyCertSign),
          leafId,
        ]),
      ],
      bundles(rootCa),
    ],
    [
      'leaf with cRLSign',
      [await craft(rootIssuer, leafEc, [bc(false), ku(KU.digitalSignature | KU.cRLSign), leafId])],
      bundles(rootCa),
    ],
    [
      'leaf without digitalSignature',
      [await craft(rootIssuer, leafEc, [bc(false), ku(KU.keyEncipherment), leafId])],
      bundles(rootCa),
    ],
    [
      'leaf without key usage',
      [await craft(rootIssuer, leafEc, [bc(false), leafId])],
      bundles(rootCa),
    ],
    [
      'leaf that is a CA',
      [await craft(rootIssuer, leafEc, [bc(true), ku(KU.digitalSignature), leafId])],
      bundles(rootCa),
    ],
    [
      'unknown critical extension',
      [
        await craft(rootIssuer, leafEc, [
          bc(false),
          ku(KU.digitalSignature),
          leafId,
          new x509.Extension('1.2.3.4.5', true, new Uint8Array([5, 0])),
        ]),
      ],
      bundles(rootCa),
    ],
    [
      'intermediate that is not a CA',
      [
        await craft({ name: 'CN=leafy', signer: leafRsa }, leafEc, [
          bc(false),
          ku(KU.digitalSignature),
          leafId,
        ]),
        await craft(
          rootIssuer,
          leafRsa,
          [bc(false), ku(KU.digitalSignature), sanUri('spiffe://example.org/x')],
          'CN=leafy',
        ),
      ],
      bundles(rootCa),
    ],
    ['pathLenConstraint 0 exceeded', [leafUnderPathLen, interUnderPathLen], bundles(pathLenRoot)],
    ['tampered signature', [flipLastByte(good), inter.der], bundles(rootCa)],
  ]
  for (const [name, chain, b, at] of cases) {
    assert.throws(() => validateX509Svid(chain, b, at ?? now), { code: 'ERR_SVID_INVALID' }, name)
  }
})

function flipLastByte(der: Uint8Array): Uint8Array {
  const out = Uint8Array.from(der)
  out[out.length - 1] = out[out.length - 1]! ^ 0x01
  return out
}

test('a CA with an empty subject gets a critical URI SAN and still anchors a chain', async () => {
  const key = await km.generateKey('root-empty', 'ec-p384')
  const der = await issueX509Ca({
    subjectPublicKey: key.publicKey,
    trustDomain: td,
    selfSigner: key,
    notBefore: t0,
    notAfter: hours(48),
    subject: '',
  })
  const c = new x509.X509Certificate(der)
  assert.equal(c.subject, '')
  assert.equal(ext(c, x509.SubjectAlternativeNameExtension).critical, true)
  const leaf = await svid({ key, der })
  assert.ok(validateX509Svid([leaf], bundles({ key, der }), now).spiffeId.equals(workload))
})
