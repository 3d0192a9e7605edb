import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { SignJWT } from 'jose'
import { encodeAzurePayload } from '../../src/attestors/cloud/azure/protocol.js'
import {
  azureServerAttestor,
  parseAzureServerConfig,
} from '../../src/attestors/cloud/azure/server.js'
import { CloudAttestationError } from '../../src/attestors/cloud/common.js'
import { encodeGcpPayload } from '../../src/attestors/cloud/gcp/protocol.js'
import { gcpServerAttestor, parseGcpServerConfig } from '../../src/attestors/cloud/gcp/server.js'
import type { AttestationContext } from '../../src/attestors/types.js'

const reason = (r: string) => (e: unknown) =>
  e instanceof CloudAttestationError && e.code === 'ERR_ATTESTATION_FAILED' && e.reason === r
const ctx = (now = new Date()): AttestationContext =>
  ({ trustDomain: 'example.org', now, state: undefined, agentPublicKey: undefined }) as never
const never = async () => false
const noChallenge = async () => {
  throw new Error('no challenge expected')
}

function keyPair(): { priv: KeyObject; jwks: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'RS256', use: 'sig' }
  return { priv: privateKey, jwks: JSON.stringify({ keys: [jwk] }) }
}

const trusted = keyPair()
const stranger = keyPair()

async function jwt(
  claims: Record<string, unknown>,
  o: { key?: KeyObject; iss: string; aud: string; life?: number; iat?: number; sub?: string },
) {
  const iat = o.iat ?? Math.floor(Date.now() / 1000)
  const j = new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setIssuer(o.iss)
    .setAudience(o.aud)
    .setIssuedAt(iat)
    .setExpirationTime(iat + (o.life ?? 3600))
  if (o.sub) j.setSubject(o.sub)
  return j.sign(o.key ?? trusted.priv)
}

test('gcp_iit: identity token → SPIRE ID and selectors; every refusal has its reason', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-gcp-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'jwks.json'), trusted.jwks)
  const cfg = parseGcpServerConfig(
    { projectid_allow_list: ['edge-fleet'], jwks_file: 'jwks.json' },
    dir,
  )
  const a = gcpServerAttestor(cfg, never)
  const ce = {
    project_id: 'edge-fleet',
    zone: 'europe-west1-b',
    instance_id: '4710471047104710471',
    instance_name: 'gw-1',
  }
  const iss = 'https://accounts.google.com'
  const aud = 'spire-gcp-node-attestor'
  const good = await jwt(
    { email: 'sa@edge-fleet.iam.gserviceaccount.com', google: { compute_engine: ce } },
    { iss, aud },
  )
  const r = await a.attest(encodeGcpPayload(good), noChallenge, ctx())
  assert.equal(r.agentPath, '/spire/agent/gcp_iit/edge-fleet/4710471047104710471')
  assert.deepEqual(
    r.selectors.map((s) => `${s.type}:${s.value}`),
    [
      'gcp_iit:project-id:edge-fleet',
      'gcp_iit:zone:europe-west1-b',
      'gcp_iit:instance-name:gw-1',
      'gcp_iit:sa:sa@edge-fleet.iam.gserviceaccount.com',
    ],
  )
  const refuse = async (token: string, why: string, attestor = a) =>
    assert.rejects(attestor.attest(encodeGcpPayload(token), noChallenge, ctx()), reason(why), why)
  await refuse(
    await jwt(
      { google: { compute_engine: ce } },
      { iss, aud, life: -120, iat: Math.floor(Date.now() / 1000) - 3600 },
    ),
    'expired',
  )
  await refuse(
    await jwt({ google: { compute_engine: ce } }, { iss, aud: 'another-audience' }),
    'audience',
  )
  await refuse(
    await jwt({ google: { compute_engine: ce } }, { iss: 'https://evil.example', aud }),
    'issuer',
  )
  await refuse(
    await jwt({ google: { compute_engine: { ...ce, project_id: 'other-project' } } }, { iss, aud }),
    'project',
  )
  await refuse(
    await jwt({ google: { compute_engine: ce } }, { iss, aud, key: stranger.priv }),
    'signature',
  )
  await refuse(await jwt({}, { iss, aud }), 'claims')
  await refuse(
    await jwt({ google: { compute_engine: { ...ce, instance_id: '../../x' } } }, { iss, aud }),
    'claims',
  )
  await refuse('not.a.jwt', 'payload')
  // A stripped signature is a failed signature, not a token without one.
  await refuse(`${good.split('.').slice(0, 2).join('.')}.`, 'signature')
  await refuse(
    await jwt({ google: { compute_engine: ce } }, { iss, aud }),
    'replay',
    gcpServerAttestor(cfg, async () => true),
  )
  // alg=none: jose refuses unsigned tokens for an RS256-only verifier.
  const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${good.split('.')[1]}.`
  await refuse(none, 'signature')
  await assert.rejects(
    a.attest(new TextEncoder().encode('{"version":1,"token":1}'), noChallenge, ctx()),
    reason('payload'),
  )
  await assert.rejects(
    a.attest(new TextEncoder().encode('{"version":1,"token":"x","more":1}'), noChallenge, ctx()),
    reason('payload'),
  )
  await assert.rejects(
    a.attest(
      new Uint8Array(Buffer.from(JSON.stringify({ version: 1, token: 'a'.repeat(20_000) }))),
      noChallenge,
      ctx(),
    ),
    reason('payload'),
  )
})

test('gcp_iit config fails closed', () => {
  assert.throws(() => parseGcpServerConfig({}, '/'), /projectid_allow_list: required/)
  assert.throws(
    () =>
      parseGcpServerConfig({ projectid_allow_list: ['p-123456'], jwks_file: '/nonexistent' }, '/'),
    /jwks_file/,
  )
  assert.throws(
    () => parseGcpServerConfig({ projectid_allow_list: ['p-123456'], jwks_url: 'ftp://x' }, '/'),
    /jwks_url/,
  )
  assert.throws(
    () => parseGcpServerConfig({ projectid_allow_list: ['p-123456'], x: 1 }, '/'),
    /x: unknown key/,
  )
})

test('azure_msi: managed identity token → SPIRE ID and selectors; every refusal has its reason', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-azure-unit-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'jwks.json'), trusted.jwks)
  const tenant = '72f988bf-86f1-41af-91ab-2d7cd011db47'
  const principal = '5b2e6c1e-3f4a-4f9b-9c1d-0e2f3a4b5c6d'
  const resource = 'api://spiffe-edge-attestation'
  const cfg = parseAzureServerConfig(
    { tenants: { [tenant]: { resource_id: resource, jwks_file: 'jwks.json' } } },
    dir,
  )
  const a = azureServerAttestor(cfg, never)
  const iss = `https://sts.windows.net/${tenant}/`
  const mirid =
    '/subscriptions/d5b40d61-272e-48da-beb9-05f295c42bd6/resourcegroups/frontend/providers/Microsoft.Compute/virtualMachines/blog'
  const claims = { tid: tenant, oid: principal, xms_mirid: mirid }
  const good = await jwt(claims, { iss, aud: resource, sub: principal })
  const r = await a.attest(encodeAzurePayload(good), noChallenge, ctx())
  assert.equal(r.agentPath, `/spire/agent/azure_msi/${tenant}/${principal}`)
  assert.deepEqual(
    r.selectors.map((s) => `${s.type}:${s.value}`),
    [
      'azure_msi:subscription-id:d5b40d61-272e-48da-beb9-05f295c42bd6',
      'azure_msi:vm-name:frontend:blog',
    ],
  )
  const refuse = async (token: string, why: string, attestor = a) =>
    assert.rejects(attestor.attest(encodeAzurePayload(token), noChallenge, ctx()), reason(why), why)
  const other = '11111111-2222-3333-4444-555555555555'
  await refuse(
    await jwt(
      { ...claims, tid: other },
      { iss: `https://sts.windows.net/${other}/`, aud: resource, sub: principal },
    ),
    'tenant',
  )
  await refuse(
    await jwt(claims, { iss, aud: 'https://management.azure.com/', sub: principal }),
    'audience',
  )
  await refuse(
    await jwt(claims, { iss: `https://sts.windows.net/${other}/`, aud: resource, sub: principal }),
    'issuer',
  )
  await refuse(
    await jwt(claims, {
      iss,
      aud: resource,
      sub: principal,
      life: -60,
      iat: Math.floor(Date.now() / 1000) - 86400,
    }),
    'expired',
  )
  await refuse(
    await jwt(claims, { iss, aud: resource, sub: principal, key: stranger.priv }),
    'signature',
  )
  await refuse(await jwt(claims, { iss, aud: resource, sub: 'a/b' }), 'claims')
  // ':' joins the selector's parts: group 'frontend:blog' + VM 'x' would read as 'frontend' + 'blog:x'.
  for (const bad of [
    mirid.replace('/resourcegroups/frontend/', '/resourcegroups/frontend:blog/'),
    mirid.replace('/virtualMachines/blog', '/virtualMachines/blog:x'),
  ])
    await refuse(
      await jwt({ ...claims, xms_mirid: bad }, { iss, aud: resource, sub: principal }),
      'claims',
    )
  await refuse(await jwt({ oid: principal }, { iss, aud: resource, sub: principal }), 'claims')
  await refuse('garbage', 'payload')
  await refuse(
    good,
    'replay',
    azureServerAttestor(cfg, async () => true),
  )
  // No resource ID claim in the token: no selectors, still the SPIRE ID.
  const bare = await a.attest(
    encodeAzurePayload(await jwt({ tid: tenant }, { iss, aud: resource, sub: principal })),
    noChallenge,
    ctx(),
  )
  assert.deepEqual(bare.selectors, [])
})

test('azure_msi config fails closed', () => {
  assert.throws(() => parseAzureServerConfig({}, '/'), /tenants: required/)
  assert.throws(
    () => parseAzureServerConfig({ tenants: { 'not-a-guid': {} } }, '/'),
    /not a tenant ID/,
  )
  assert.throws(
    () =>
      parseAzureServerConfig(
        { tenants: { '72f988bf-86f1-41af-91ab-2d7cd011db47': { bogus: 1 } } },
        '/',
      ),
    /bogus: unknown key/,
  )
})

test('gcp_iit: the claim set a real metadata server issued (a documented sample, re-signed here)', async (t) => {
  // Google's keys rotate daily, so a published token cannot be verified later: this is the payload
  // of one (as printed in CyberArk Conjur's GCP authenticator docs), signed with a test key, to
  // prove the parser reads the real claim shapes (numeric project_number, string instance_id).
  const sample = {
    aud: 'conjur/myorg/myapp',
    azp: '110987294251917851298',
    email: '716149158341-compute@developer.gserviceaccount.com',
    email_verified: true,
    exp: 1595160638,
    google: {
      compute_engine: {
        instance_creation_timestamp: 1595155766,
        instance_id: '4340508760561261530',
        instance_name: 'vm-for-gcp',
        project_id: 'eng-serenity-231813',
        project_number: 716149158341,
        zone: 'us-central1-a',
      },
    },
    iat: 1595157038,
    iss: 'https://accounts.google.com',
    sub: '110987294251917851298',
  }
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-gcp-sample-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'jwks.json'), trusted.jwks)
  const token = await new SignJWT(sample)
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .sign(trusted.priv)
  const a = gcpServerAttestor(
    parseGcpServerConfig(
      {
        projectid_allow_list: ['eng-serenity-231813'],
        audience: sample.aud,
        jwks_file: 'jwks.json',
      },
      dir,
    ),
    never,
  )
  const r = await a.attest(encodeGcpPayload(token), noChallenge, ctx(new Date(1595157100_000)))
  assert.equal(r.agentPath, '/spire/agent/gcp_iit/eng-serenity-231813/4340508760561261530')
  assert.ok(r.selectors.some((s) => s.value === 'instance-name:vm-for-gcp'))
  // An hour later the same token has expired.
  await assert.rejects(
    a.attest(encodeGcpPayload(token), noChallenge, ctx(new Date(1595164000_000))),
    reason('expired'),
  )
})
