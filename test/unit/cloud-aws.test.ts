import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ensureCloudKeys } from '../../hardware-sim/cloud/keys.js'
import { awsDocument, awsSignatures } from '../../hardware-sim/cloud/service.js'
import { AWS_PKCS7_CERTIFICATES } from '../../src/attestors/cloud/aws/certs.js'
import { Pkcs7Error, verifyPkcs7 } from '../../src/attestors/cloud/aws/pkcs7.js'
import { encodeAwsPayload } from '../../src/attestors/cloud/aws/protocol.js'
import { awsServerAttestor, parseAwsServerConfig } from '../../src/attestors/cloud/aws/server.js'
import { CloudAttestationError } from '../../src/attestors/cloud/common.js'
import type { AttestationContext } from '../../src/attestors/types.js'
import { openMemoryDatastore } from '../../src/server/datastore/sqlite.js'
import { buildNodeAttestors } from '../../src/server/plugins.js'
import { AWS_PKCS7_SAMPLE, AWS_SAMPLE } from '../fixtures/aws-iid.js'
import { run } from '../helpers/exec.js'

const der = (pem: string) =>
  new Uint8Array(Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64'))
const sampleDer = der(AWS_PKCS7_SAMPLE)
const shipped = (region: string) => new X509Certificate(AWS_PKCS7_CERTIFICATES[region]!)
const reason = (r: string) => (e: unknown) =>
  e instanceof CloudAttestationError && e.code === 'ERR_ATTESTATION_FAILED' && e.reason === r

const ctx = (now: Date): AttestationContext =>
  ({ trustDomain: 'example.org', now, state: undefined, agentPublicKey: undefined }) as never
const never = async () => false
const noChallenge = async () => {
  throw new Error('no challenge expected')
}

test("AWS's real PKCS#7 sample verifies against the shipped DSA certificate, and only it", () => {
  const r = verifyPkcs7(sampleDer, [shipped('*')], true)
  const doc = JSON.parse(Buffer.from(r.content).toString('utf8'))
  assert.equal(doc.accountId, AWS_SAMPLE.accountId)
  assert.equal(doc.instanceId, AWS_SAMPLE.instanceId)
  assert.equal(r.digest, 'sha1')
  assert.equal(r.signingTime?.toISOString(), AWS_SAMPLE.signingTime)
  // Hong Kong's certificate, SHA-1 not allowed, or one flipped signature bit: refused.
  assert.throws(
    () => verifyPkcs7(sampleDer, [shipped('ap-east-1')], true),
    (e: unknown) => e instanceof Pkcs7Error && e.kind === 'signature',
  )
  assert.throws(() => verifyPkcs7(sampleDer, [shipped('*')], false), /SHA-1/)
  const tampered = sampleDer.slice()
  tampered[tampered.length - 12]! ^= 1
  assert.throws(
    () => verifyPkcs7(tampered, [shipped('*')], true),
    (e: unknown) => e instanceof Pkcs7Error,
  )
  assert.throws(() => verifyPkcs7(new Uint8Array(20_000), [shipped('*')], true), /over/)
  assert.throws(
    () => verifyPkcs7(new Uint8Array([0x30, 0x03, 1, 2, 3]), [shipped('*')], true),
    (e: unknown) => e instanceof Pkcs7Error && e.kind === 'malformed',
  )
})

test('aws_iid server: the real sample attests with the shipped certificates, SPIRE ID and selectors', async () => {
  const cfg = parseAwsServerConfig({ account_ids: [AWS_SAMPLE.accountId] }, '/')
  const document = Buffer.from(verifyPkcs7(sampleDer, [shipped('*')], true).content).toString(
    'utf8',
  )
  const a = awsServerAttestor(cfg, never)
  const payload = encodeAwsPayload({ document, signatureKind: 'pkcs7', signature: sampleDer })
  const r = await a.attest(payload, noChallenge, ctx(new Date('2016-04-08T04:00:00Z')))
  assert.equal(
    r.agentPath,
    `/spire/agent/aws_iid/${AWS_SAMPLE.accountId}/us-east-1/${AWS_SAMPLE.instanceId}`,
  )
  assert.deepEqual(
    r.selectors.map((s) => `${s.type}:${s.value}`),
    [
      'aws_iid:az:us-east-1a',
      `aws_iid:image:id:${AWS_SAMPLE.imageId}`,
      `aws_iid:instance:id:${AWS_SAMPLE.instanceId}`,
      'aws_iid:region:us-east-1',
    ],
  )
  assert.equal(r.canReattest, false)

  // Refusals, each with its reason.
  const other = awsServerAttestor(
    parseAwsServerConfig({ account_ids: ['999999999999'] }, '/'),
    never,
  )
  await assert.rejects(
    other.attest(payload, noChallenge, ctx(new Date('2016-04-08T04:00:00Z'))),
    reason('account'),
  )
  const aged = awsServerAttestor(
    parseAwsServerConfig({ account_ids: [AWS_SAMPLE.accountId], max_document_age: 600 }, '/'),
    never,
  )
  await assert.rejects(
    aged.attest(payload, noChallenge, ctx(new Date('2016-04-08T04:00:00Z'))),
    reason('expired'),
  )
  await assert.rejects(
    a.attest(payload, noChallenge, ctx(new Date('2016-04-08T02:00:00Z'))),
    reason('expired'),
  )
  const seen = awsServerAttestor(cfg, async (id) => id.endsWith(AWS_SAMPLE.instanceId))
  await assert.rejects(
    seen.attest(payload, noChallenge, ctx(new Date('2016-04-08T04:00:00Z'))),
    reason('replay'),
  )
  const again = awsServerAttestor(
    parseAwsServerConfig({ account_ids: [AWS_SAMPLE.accountId], tofu: false }, '/'),
    async () => true,
  )
  assert.ok(await again.attest(payload, noChallenge, ctx(new Date('2016-04-08T04:00:00Z'))))
  // A document other than the signed one (another account in the same signature).
  const forged = document.replace(AWS_SAMPLE.accountId, '999999999999')
  const forgedCfg = awsServerAttestor(
    parseAwsServerConfig({ account_ids: ['999999999999'] }, '/'),
    never,
  )
  await assert.rejects(
    forgedCfg.attest(
      encodeAwsPayload({ document: forged, signatureKind: 'pkcs7', signature: sampleDer }),
      noChallenge,
      ctx(new Date('2016-04-08T04:00:00Z')),
    ),
    reason('signature'),
  )
  // The plain /signature form needs an RSA certificate: AWS's DSA one cannot verify it.
  await assert.rejects(
    a.attest(
      encodeAwsPayload({ document, signatureKind: 'signature', signature: new Uint8Array(256) }),
      noChallenge,
      ctx(new Date('2016-04-08T04:00:00Z')),
    ),
    reason('signature'),
  )
})

test('aws_iid server: malformed payloads are refused as payload, before any crypto', async () => {
  const a = awsServerAttestor(
    parseAwsServerConfig({ account_ids: [AWS_SAMPLE.accountId] }, '/'),
    never,
  )
  const bad = [
    'not json',
    JSON.stringify({ version: 2, document: '{}', signature_kind: 'pkcs7', signature: 'AAAA' }),
    JSON.stringify({
      version: 1,
      document: '{}',
      signature_kind: 'pkcs7',
      signature: 'AAAA',
      extra: 1,
    }),
    JSON.stringify({ version: 1, document: '{}', signature_kind: 'md5', signature: 'AAAA' }),
    JSON.stringify({
      version: 1,
      document: '{}',
      signature_kind: 'pkcs7',
      signature: 'not base64!',
    }),
    JSON.stringify({
      version: 1,
      document: 'x'.repeat(9000),
      signature_kind: 'pkcs7',
      signature: 'AAAA',
    }),
    'x'.repeat(40_000),
  ]
  for (const b of bad) {
    await assert.rejects(
      a.attest(new Uint8Array(Buffer.from(b)), noChallenge, ctx(new Date())),
      reason('payload'),
      b.slice(0, 60),
    )
  }
  // A well-formed envelope around a document without the fields the ID needs.
  const p = encodeAwsPayload({
    document: '{"accountId":"1"}',
    signatureKind: 'pkcs7',
    signature: sampleDer,
  })
  await assert.rejects(a.attest(p, noChallenge, ctx(new Date())), reason('claims'))
})

test('aws_iid server config fails closed', () => {
  assert.throws(() => parseAwsServerConfig({}, '/'), /account_ids: required/)
  assert.throws(() => parseAwsServerConfig({ account_ids: ['12'] }, '/'), /account_ids/)
  assert.throws(
    () => parseAwsServerConfig({ account_ids: ['123456789012'], bogus: 1 }, '/'),
    /bogus: unknown key/,
  )
  assert.throws(
    () =>
      parseAwsServerConfig(
        { account_ids: ['123456789012'], certificates: { 'us-east-1': '/nonexistent.pem' } },
        '/',
      ),
    /certificates.us-east-1/,
  )
  assert.throws(
    () =>
      parseAwsServerConfig({ account_ids: ['123456789012'], certificates: { mars: 'x.pem' } }, '/'),
    /not an AWS region/,
  )
})

test('aws_iid server: the /rsa2048 and /signature forms with a configured regional certificate (openssl-made)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-aws-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const keys = await ensureCloudKeys(dir, 'aws')
  const now = new Date()
  const document = awsDocument(
    {
      accountId: '123456789012',
      region: 'eu-central-1',
      availabilityZone: 'eu-central-1a',
      instanceId: 'i-0123456789abcdef0',
      imageId: 'ami-0123456789abcdef0',
    } as never,
    now,
  )
  const sigs = awsSignatures(keys, document)
  const cfg = parseAwsServerConfig(
    { account_ids: ['123456789012'], certificates: { 'eu-central-1': keys.trustFile } },
    '/',
  )
  const a = awsServerAttestor(cfg, never)
  for (const kind of ['rsa2048', 'signature'] as const) {
    const signature = new Uint8Array(Buffer.from(sigs[kind]!, 'base64'))
    const r = await a.attest(
      encodeAwsPayload({ document, signatureKind: kind, signature }),
      noChallenge,
      ctx(now),
    )
    assert.equal(r.agentPath, '/spire/agent/aws_iid/123456789012/eu-central-1/i-0123456789abcdef0')
  }
  // Another region has no certificate configured: refused, not verified with eu-central-1's.
  const us = document.replaceAll('eu-central-1', 'us-east-2')
  await assert.rejects(
    a.attest(
      encodeAwsPayload({
        document: us,
        signatureKind: 'signature',
        signature: new Uint8Array(Buffer.from(sigs.signature!, 'base64')),
      }),
      noChallenge,
      ctx(now),
    ),
    reason('signature'),
  )
  // SHA-1 is refused in the RSA form (only AWS's DSA /pkcs7 uses it).
  const docFile = join(dir, 'doc')
  writeFileSync(docFile, document)
  const sha1 = await run('openssl', [
    'smime',
    '-sign',
    '-binary',
    '-nodetach',
    '-nocerts',
    '-md',
    'sha1',
    '-outform',
    'DER',
    '-signer',
    keys.trustFile,
    '-inkey',
    keys.keyFile,
    '-in',
    docFile,
    '-out',
    join(dir, 'sha1.der'),
  ])
  assert.equal(sha1.code, 0, sha1.stderr)
  await assert.rejects(
    a.attest(
      encodeAwsPayload({
        document,
        signatureKind: 'rsa2048',
        signature: new Uint8Array(readFileSync(join(dir, 'sha1.der'))),
      }),
      noChallenge,
      ctx(now),
    ),
    (e: unknown) => reason('signature')(e) && /SHA-1/.test((e as Error).message),
  )
})

test('aws_iid from the server catalog: first use is judged by the datastore (evicted: again; banned: left to the node API)', async () => {
  const datastore = await openMemoryDatastore()
  try {
    const built = buildNodeAttestors(
      new Map([['aws_iid', { account_ids: [AWS_SAMPLE.accountId] }]]),
      {
        datastore,
        configDir: '/',
        log: () => undefined,
      },
    )
    const a = built.get('aws_iid')!
    const document = Buffer.from(verifyPkcs7(sampleDer, [shipped('*')], true).content).toString(
      'utf8',
    )
    const payload = encodeAwsPayload({ document, signatureKind: 'pkcs7', signature: sampleDer })
    const when = ctx(new Date('2016-04-08T04:00:00Z'))
    const r = await a.attest(payload, noChallenge, when)
    const id = `spiffe://example.org${r.agentPath}`
    const node = {
      spiffeId: id,
      attestorType: 'aws_iid',
      selectors: [],
      certSerial: '01',
      previousCertSerial: '',
      certNotAfter: 2_000_000_000,
      canReattest: false,
      banned: false,
      createdAt: 1,
      updatedAt: 1,
    }
    await datastore.createAttestedNode(node)
    await assert.rejects(a.attest(payload, noChallenge, when), reason('replay'))
    await datastore.updateAttestedNode(id, { banned: true })
    assert.equal((await a.attest(payload, noChallenge, when)).agentPath, r.agentPath)
    await datastore.deleteAttestedNode(id) // what `server agent evict` does
    assert.equal((await a.attest(payload, noChallenge, when)).agentPath, r.agentPath)
  } finally {
    await datastore.close()
  }
})
