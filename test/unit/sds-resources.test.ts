import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { sdsCodec } from '../../src/agent/workload-api/sds-proto.js'
import {
  buildSdsResponse,
  checkSdsRequest,
  DEFAULT_SDS_NAMES,
  SDS_LIMITS,
} from '../../src/agent/workload-api/sds-resources.js'
import type { X509Update } from '../../src/agent/workload-api/types.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import {
  decodeResponse,
  decodeSecret,
  decodeSpiffeValidator,
  SECRET_TYPE,
} from '../helpers/envoy-sds-client.js'

const codec = sdsCodec()
const key = () =>
  new Uint8Array(
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'der',
    }),
  )
// The builder only PEM-wraps certificates; distinct bytes tell them apart.
const cert = (tag: string) => new TextEncoder().encode(`cert:${tag}`)
const b64 = (tag: string) => Buffer.from(`cert:${tag}`).toString('base64')

const update: X509Update = {
  svids: [
    {
      spiffeId: 'spiffe://example.org/a',
      chain: [cert('a')],
      privateKey: key(),
      hint: '',
      entryId: '1',
    },
    {
      spiffeId: 'spiffe://example.org/b',
      chain: [cert('b')],
      privateKey: key(),
      hint: '',
      entryId: '2',
    },
    // A second entry with the first one's ID: served once, as the first.
    {
      spiffeId: 'spiffe://example.org/a',
      chain: [cert('a2')],
      privateKey: key(),
      hint: '',
      entryId: '3',
    },
  ],
  bundles: new Map([
    ['other.org', [cert('other-ca')]],
    ['example.org', [cert('own-ca')]],
  ]),
}
const envoy130 = { userAgentBuildVersion: { version: { majorNumber: 1, minorNumber: 30 } } }

function build(names: string[], node?: object) {
  const req = {
    versionInfo: '',
    resourceNames: names,
    typeUrl: '',
    responseNonce: '',
    ...(node ? { node } : {}),
  }
  const res = decodeResponse(
    codec.encodeResponse(
      buildSdsResponse(codec, DEFAULT_SDS_NAMES, 'example.org', req, update, '7', 'n'),
    ),
  )
  assert.equal(res.type_url, SECRET_TYPE)
  assert.equal(res.version_info, '7')
  assert.equal(res.nonce, 'n')
  return new Map(res.resources.map((a) => [decodeSecret(a).name, decodeSecret(a)]))
}

test('no names: every SVID once by its ID and every bundle by spiffe://<td>, no aliases', () => {
  const m = build([])
  assert.deepEqual([...m.keys()].sort(), [
    'spiffe://example.org',
    'spiffe://example.org/a',
    'spiffe://example.org/b',
    'spiffe://other.org',
  ])
  const a = m.get('spiffe://example.org/a')!.tls_certificate!
  assert.match(a.certificate_chain.inline_bytes.toString(), new RegExp(b64('a')))
  assert.match(a.private_key.inline_bytes.toString(), /BEGIN PRIVATE KEY/)
  const other = m.get('spiffe://other.org')!.validation_context!.trusted_ca!.inline_bytes.toString()
  assert.match(other, new RegExp(b64('other-ca')))
  assert.doesNotMatch(other, new RegExp(b64('own-ca')))
})

test('default is the first SVID, ROOTCA the own bundle, ALL every bundle (SPIFFE validator)', () => {
  const m = build(['default', 'ROOTCA', 'ALL', 'spiffe://example.org/b'], envoy130)
  assert.deepEqual([...m.keys()].sort(), ['ALL', 'ROOTCA', 'default', 'spiffe://example.org/b'])
  assert.match(
    m.get('default')!.tls_certificate!.certificate_chain.inline_bytes.toString(),
    new RegExp(b64('a')),
  )
  const all = decodeSpiffeValidator(
    m.get('ALL')!.validation_context!.custom_validator_config!.typed_config,
  )
  assert.deepEqual(
    all.trust_domains.map((d) => d.name),
    ['example.org', 'other.org'],
  )
  assert.match(
    all.trust_domains[1]!.trust_bundle.inline_bytes.toString(),
    new RegExp(b64('other-ca')),
  )
  const root = decodeSpiffeValidator(
    m.get('ROOTCA')!.validation_context!.custom_validator_config!.typed_config,
  )
  assert.deepEqual(
    root.trust_domains.map((d) => d.name),
    ['example.org'],
  )
})

test('a name the workload has no secret for fails the whole request', () => {
  assert.throws(
    () => build(['default', 'spiffe://example.org/c']),
    /not authorized[^\n]*example\.org\/c/,
  )
  assert.throws(() => build(['spiffe://third.org']), /not authorized/)
  // trusted_ca cannot scope CAs to trust domains: ALL needs the validator, as in SPIRE.
  assert.throws(() => build(['ALL']), /SPIFFE validator/)
})

test('requests are bounded and typed', () => {
  const req = (resourceNames: string[], typeUrl = '') => ({
    versionInfo: '',
    resourceNames,
    typeUrl,
    responseNonce: '',
  })
  checkSdsRequest(req(Array.from({ length: SDS_LIMITS.maxNames }, () => 'x')))
  const refused = (r: ReturnType<typeof req>, re: RegExp) =>
    assert.throws(
      () => checkSdsRequest(r),
      (e) => e instanceof SpiffeEdgeError && e.code === 'ERR_WORKLOAD_API' && re.test(e.message),
    )
  refused(req(Array.from({ length: SDS_LIMITS.maxNames + 1 }, () => 'x')), /too many/)
  refused(req(['x'.repeat(SDS_LIMITS.maxNameBytes + 1)]), /bytes/)
  refused(req([], 'type.googleapis.com/envoy.config.cluster.v3.Cluster'), /unsupported type_url/)
})

test('configured names replace default/ROOTCA/ALL; disable_spiffe_cert_validation forces trusted_ca', () => {
  const names = {
    defaultSvidName: 'svid',
    defaultBundleName: 'ca',
    defaultAllBundlesName: 'every',
    disableSpiffeCertValidation: true,
  }
  const req = (resourceNames: string[]) => ({
    versionInfo: '',
    resourceNames,
    typeUrl: SECRET_TYPE,
    responseNonce: '',
    node: envoy130,
  })
  const res = decodeResponse(
    codec.encodeResponse(
      buildSdsResponse(codec, names, 'example.org', req(['svid', 'ca']), update, '1', 'n'),
    ),
  )
  const m = new Map(res.resources.map((a) => [decodeSecret(a).name, decodeSecret(a)]))
  assert.deepEqual([...m.keys()].sort(), ['ca', 'svid'])
  assert.ok(m.get('ca')!.validation_context!.trusted_ca, 'trusted_ca even for Envoy 1.30')
  assert.equal(m.get('ca')!.validation_context!.custom_validator_config, undefined)
  assert.throws(
    () => buildSdsResponse(codec, names, 'example.org', req(['default']), update, '1', 'n'),
    /not authorized/,
  )
  assert.throws(
    () => buildSdsResponse(codec, names, 'example.org', req(['every']), update, '1', 'n'),
    /SPIFFE validator/,
  )
})
