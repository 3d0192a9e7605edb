import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { joinTokenAgentAttestor } from '../../src/attestors/join-token/agent.js'
import { silentLog } from '../../src/common/log.js'
import { x509 } from '../../src/common/x509.js'
import { isSpiffeEdgeError } from '../../src/errors.js'
import {
  generateSoftwareKeyPair,
  MemoryKeyManager,
  softwareKey,
} from '../../src/keymanager/memory.js'
import { parseServerConfig } from '../../src/server/config.js'
import { startServer } from '../../src/server/server.js'
import { TrustBundle } from '../../src/spiffe/bundle.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { issueX509Ca, issueX509Svid } from '../../src/spiffe/x509-svid.js'
import { type AgentAuth, GrpcNodeClient } from '../../src/transport/grpc-client.js'
import { run } from '../helpers/exec.js'
import { startTestServer } from '../helpers/server.js'

const td = TrustDomain.parse('example.org')
const pem = (der: Uint8Array) => new x509.X509Certificate(der).toString('pem')
const HOUR = 3600_000

interface UpstreamFiles {
  readonly cert: string
  readonly key: string
  readonly bundle: string
}

/** An upstream root CA (software key) valid for 12 h: shorter than the server's 24 h ca_ttl. */
async function makeRoot() {
  const { privateKey, publicKey } = await generateSoftwareKeyPair('ec-p256')
  const signer = softwareKey('upstream-root', 'ec-p256', privateKey, publicKey)
  const now = Date.now()
  const der = await issueX509Ca({
    subjectPublicKey: publicKey,
    trustDomain: td,
    selfSigner: signer,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 12 * HOUR),
    subject: 'CN=upstream root,O=spiffe-edge tests',
  })
  return { der, signer, privateKey, publicKey }
}

function writeUpstream(
  dir: string,
  certDer: Uint8Array,
  keyPem: string,
  bundleDer: Uint8Array,
): UpstreamFiles {
  const files = {
    cert: join(dir, 'upstream-cert.pem'),
    key: join(dir, 'upstream-key.pem'),
    bundle: join(dir, 'upstream-bundle.pem'),
  }
  writeFileSync(files.cert, pem(certDer))
  writeFileSync(files.key, keyPem, { mode: 0o600 })
  writeFileSync(files.bundle, pem(bundleDer))
  return files
}

function upstreamToml(f: UpstreamFiles): string {
  return [
    '[server.upstream]',
    `cert_file = ${JSON.stringify(f.cert)}`,
    `key_file = ${JSON.stringify(f.key)}`,
    `bundle_file = ${JSON.stringify(f.bundle)}`,
  ].join('\n')
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-upstream-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** startServer straight from a config, for the cases where it must refuse to start. */
async function startWithUpstream(dir: string, f: UpstreamFiles) {
  const config = parseServerConfig(
    `[server]\ntrust_domain = "example.org"\nbind_port = 0\nadmin_socket = "./admin.sock"\nca_ttl = "24h"\n${upstreamToml(f)}\n` +
      '[plugins.NodeAttestor.join_token]\n',
    join(dir, 'server.conf'),
  )
  const server = await startServer(config, { log: silentLog })
  await server.close()
}

const configError = (e: unknown) => isSpiffeEdgeError(e) && e.code === 'ERR_CONFIG'

test('an upstream root signs the CA: the bundle is the root, SVID chains verify', async (t) => {
  const dir = tempDir(t)
  const root = await makeRoot()
  const keyPem = root.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const files = writeUpstream(dir, root.der, keyPem, root.der)
  // extraToml goes inside [server]; the upstream table header must be last in it.
  await using s = await startTestServer({
    extraToml: `attest_rate_per_second = 1000\n${upstreamToml(files)}`,
  })
  assert.deepEqual(s.server.ca.bundle().x509Authorities, [root.der])
  const published = await s.admin('GET', '/v1/bundle?format=spiffe')
  const bundle = TrustBundle.fromSpiffeJson(td, String(published.bundle))
  assert.deepEqual(bundle.x509Authorities, [root.der])

  const token = await s.token()
  const keys = new MemoryKeyManager()
  const key = await keys.generateKey('agent', 'ec-p256')
  const insecure = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: 'insecure' })
  t.after(() => insecure.close())
  const r = await insecure.attestAgent(joinTokenAgentAttestor(token), key)
  assert.deepEqual(r.bundle.x509Authorities, [root.der])

  const chain = r.svid.certChain
  assert.equal(chain.length, 2, 'leaf and intermediate')
  const [leafDer, interDer] = chain as [Uint8Array, Uint8Array]
  const rootCert = new X509Certificate(root.der)
  const inter = new X509Certificate(interDer)
  const leaf = new X509Certificate(leafDer)
  assert.equal(inter.ca, true)
  assert.ok(inter.checkIssued(rootCert), 'intermediate names the root as its issuer')
  assert.ok(inter.verify(rootCert.publicKey), 'intermediate is signed by the upstream root')
  assert.ok(leaf.verify(inter.publicKey), 'leaf is signed by the intermediate')
  assert.ok(!leaf.verify(rootCert.publicKey))
  assert.ok(
    new Date(inter.validTo).getTime() <= new Date(rootCert.validTo).getTime(),
    `intermediate ${inter.validTo} outlives root ${rootCert.validTo}`,
  )
  assert.ok(new Date(leaf.validTo).getTime() <= new Date(inter.validTo).getTime())

  writeFileSync(join(dir, 'upstream-root.pem'), pem(root.der))
  writeFileSync(join(dir, 'intermediate.pem'), pem(interDer))
  writeFileSync(join(dir, 'leaf.pem'), pem(leafDer))
  const v = await run('openssl', [
    'verify',
    '-CAfile',
    join(dir, 'upstream-root.pem'),
    '-untrusted',
    join(dir, 'intermediate.pem'),
    join(dir, 'leaf.pem'),
  ])
  assert.equal(v.code, 0, v.stdout + v.stderr)
  // Without the intermediate the leaf does not chain to the root.
  const alone = await run('openssl', [
    'verify',
    '-CAfile',
    join(dir, 'upstream-root.pem'),
    join(dir, 'leaf.pem'),
  ])
  assert.notEqual(alone.code, 0)

  // An agent that trusts only the upstream root accepts the server (TLS with the intermediate)
  // and the server accepts the agent's two-certificate SVID on signed calls.
  const strict = new GrpcNodeClient({ address: s.address, trustDomain: td, bundle: r.bundle })
  t.after(() => strict.close())
  const got = await strict.call('GetBundle', {})
  assert.deepEqual(TrustBundle.fromSpiffeJson(td, got.bundle).x509Authorities, [root.der])
  const auth: AgentAuth = { spiffeId: r.svid.spiffeId, chain, signer: key }
  const sync = await strict.call('SyncEntries', { sinceRevision: 0 }, auth)
  assert.equal(sync.full, true)
})

test('a non-CA upstream certificate or an unusable key file is ERR_CONFIG', async (t) => {
  const dir = tempDir(t)
  const root = await makeRoot()
  const rootKeyPem = root.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()

  // A leaf (cA=false) issued by the root, with its own key, offered as the upstream CA.
  const leafKeys = await generateSoftwareKeyPair('ec-p256')
  const leafDer = await issueX509Svid({
    subjectPublicKey: leafKeys.publicKey,
    spiffeId: SpiffeId.parse('spiffe://example.org/not-a-ca'),
    issuer: { certificate: root.der, signer: root.signer },
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + HOUR),
  })
  const nonCaDir = join(dir, 'non-ca')
  mkdirSync(nonCaDir)
  const nonCa = writeUpstream(
    nonCaDir,
    leafDer,
    leafKeys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    root.der,
  )
  await assert.rejects(startWithUpstream(nonCaDir, nonCa), configError)

  // key_file missing.
  const missingDir = join(dir, 'missing-key')
  mkdirSync(missingDir)
  const missing = writeUpstream(missingDir, root.der, rootKeyPem, root.der)
  rmSync(missing.key)
  await assert.rejects(startWithUpstream(missingDir, missing), configError)

  // key_file cannot be read as a file (a directory: root can read any mode-000 file).
  const unreadableDir = join(dir, 'unreadable-key')
  mkdirSync(unreadableDir)
  const unreadable = writeUpstream(unreadableDir, root.der, rootKeyPem, root.der)
  rmSync(unreadable.key)
  mkdirSync(unreadable.key)
  await assert.rejects(startWithUpstream(unreadableDir, unreadable), configError)

  // key_file holds no private key.
  const garbageDir = join(dir, 'garbage-key')
  mkdirSync(garbageDir)
  const garbage = writeUpstream(garbageDir, root.der, 'not a key\n', root.der)
  await assert.rejects(startWithUpstream(garbageDir, garbage), configError)
})

test("an upstream key that is not the upstream certificate's is a config error", async (t) => {
  const dir = tempDir(t)
  const root = await makeRoot()
  const stranger = await generateSoftwareKeyPair('ec-p256')
  const files = writeUpstream(
    dir,
    root.der,
    stranger.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    root.der,
  )
  // A valid key of the wrong pair is a misconfigured [server.upstream], like the cases above.
  await assert.rejects(startWithUpstream(dir, files), configError)
})
