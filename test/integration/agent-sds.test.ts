import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  agentArgs,
  processDir,
  startServerProcess,
  writeAgentConfig,
} from '../helpers/agent-process.js'
import { startCli } from '../helpers/cli-process.js'
import {
  decodeSecret,
  decodeSpiffeValidator,
  ENVOY_NODE,
  EnvoySdsClient,
  type Response,
  SECRET_TYPE,
  type Secret,
} from '../helpers/envoy-sds-client.js'
import { repoRoot } from '../helpers/exec.js'

const ME = 'spiffe://example.org/w'
const TD = 'spiffe://example.org'
const INVALID_ARGUMENT = 3
const PERMISSION_DENIED = 7

const pemCerts = (b: Buffer): X509Certificate[] =>
  (
    b.toString('utf8').match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []
  ).map((p) => new X509Certificate(p))

const secrets = (r: Response): Map<string, Secret> =>
  new Map(r.resources.map((a) => [decodeSecret(a).name, decodeSecret(a)]))

/** The leaf of a tls_certificate secret, checked: our SPIFFE ID, its key, signed by `cas`. */
function checkTls(s: Secret | undefined, cas: X509Certificate[]): X509Certificate {
  assert.ok(s?.tls_certificate, 'a tls_certificate secret')
  const chain = pemCerts(s.tls_certificate.certificate_chain.inline_bytes)
  const leaf = chain[0]!
  assert.match(leaf.subjectAltName ?? '', new RegExp(`URI:${ME}(,|$)`))
  const key = createPrivateKey(s.tls_certificate.private_key.inline_bytes)
  assert.ok(leaf.checkPrivateKey(key), 'the private key belongs to the certificate')
  const top = chain.at(-1)!
  assert.ok(
    cas.some((ca) => top.checkIssued(ca) && top.verify(ca.publicKey)),
    'the chain is signed by a CA of the bundle',
  )
  return leaf
}

/**
 * Issue 15 (SDS): a real server and agent, 10 s workload SVIDs, and an SDS client built from
 * Envoy's protos only. Secrets arrive under SPIRE's names, a rotation pushes a new version, ACKs
 * and NACKs send nothing back (no loop), stale nonces are ignored, unknown names and oversized
 * requests are refused, and a caller with no entry (another uid) gets no secret at all.
 */
test('Envoy SDS v3 on a real agent: secrets, rotation, ACK/NACK, unattested callers', {
  timeout: 180_000,
}, async (t) => {
  const dir = processDir('spiffe-edge-sds-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const server = await startServerProcess(
    dir,
    t,
    'default_x509_svid_ttl = "10s"\nattest_rate_per_second = 1000',
  )
  const token = JSON.parse(
    await server.admin('token', 'generate', '--spiffeID', 'spiffe://example.org/host', '--json'),
  ).value as string
  await server.admin(
    'entry',
    'create',
    '--parentID',
    'spiffe://example.org/host',
    '--spiffeID',
    ME,
    '--selector',
    `unix:uid:${process.getuid!()}`,
  )
  const config = writeAgentConfig(dir, server.address, 'sync_interval = "1s"')
  const agent = await startCli(
    // The socket outside the agent's private data dir, so the other-uid caller below can connect.
    [
      ...agentArgs(config, '--insecure-bootstrap', '--socket-path', join(dir, 'sock', 'api.sock')),
      '--join-token',
      token,
    ],
    t,
  )
  const socket = String(agent.first.socket_path)
  const cas = pemCerts(Buffer.from(await server.admin('bundle', 'show')))
  assert.ok(cas.length > 0)
  const client = new EnvoySdsClient(socket)
  t.after(() => client.close())

  await t.test('StreamSecrets: names, rotation, ACK and NACK', async () => {
    const names = [ME, 'default', 'ROOTCA', TD]
    const s = client.stream()
    t.after(() => s.close())
    s.send({ resource_names: names })
    const r0 = await s.response(0)
    assert.equal(r0.type_url, SECRET_TYPE)
    assert.equal(r0.version_info, '1')
    assert.match(r0.nonce, /^[0-9a-f]{16}$/)
    const m0 = secrets(r0)
    assert.deepEqual([...m0.keys()].sort(), [...names].sort())
    const leaf0 = checkTls(m0.get(ME), cas)
    assert.equal(checkTls(m0.get('default'), cas).serialNumber, leaf0.serialNumber)
    for (const n of ['ROOTCA', TD]) {
      // No Envoy version in the node: trusted_ca, as SPIRE sends Envoy before 1.18.
      const ca = m0.get(n)?.validation_context?.trusted_ca?.inline_bytes
      assert.ok(ca, `${n} is a trusted_ca validation context`)
      assert.deepEqual(
        pemCerts(ca).map((c) => c.fingerprint256),
        cas.map((c) => c.fingerprint256),
      )
    }
    // ACK. Nothing comes back for it: the next response is the rotation (a new version and leaf).
    s.send({ resource_names: names, version_info: r0.version_info, response_nonce: r0.nonce })
    const r1 = await s.response(1, 40_000)
    assert.equal(r1.version_info, '2')
    assert.notEqual(r1.nonce, r0.nonce)
    const leaf1 = checkTls(secrets(r1).get(ME), cas)
    assert.notEqual(leaf1.serialNumber, leaf0.serialNumber, 'a rotated SVID was pushed')

    // NACK r1 (Envoy echoes the version it still runs): no resend of what it refused.
    s.send({
      resource_names: names,
      version_info: r0.version_info,
      response_nonce: r1.nonce,
      error_detail: { code: 13, message: 'test: cannot apply secret' },
    })
    await sleep(1000)
    const r2 = await s.response(2, 40_000)
    assert.equal(r2.version_info, '3')
    const leaf2 = checkTls(secrets(r2).get(ME), cas)
    assert.notEqual(leaf2.serialNumber, leaf1.serialNumber, 'after a NACK only a new SVID is sent')
    assert.match(agent.stderr(), /Envoy reported errors applying secrets[^\n]*cannot apply secret/)

    // A stale nonce is ignored, even with names we would refuse; the current one is answered.
    s.send({ resource_names: ['spiffe://example.org/nope'], response_nonce: r0.nonce })
    s.send({ resource_names: ['ROOTCA'], version_info: r2.version_info, response_nonce: r2.nonce })
    const r3 = await s.response(3)
    assert.equal(s.error, undefined)
    assert.deepEqual([...secrets(r3).keys()], ['ROOTCA'])
    assert.equal(r3.version_info, r2.version_info, 'a change of names is not a new version')
  })

  await t.test('Envoy 1.18+: SPIFFE validator for ROOTCA and ALL', async () => {
    const s = client.stream()
    t.after(() => s.close())
    s.send({ node: ENVOY_NODE, resource_names: ['ALL', 'ROOTCA'] })
    const r0 = await s.response(0)
    // Envoy sends its node in the first request only: later ones keep the stream's format.
    s.send({
      resource_names: ['ALL', 'ROOTCA', TD],
      response_nonce: r0.nonce,
      version_info: r0.version_info,
    })
    const r1 = await s.response(1)
    assert.deepEqual([...secrets(r1).keys()].sort(), ['ALL', 'ROOTCA', TD])
    const m = secrets(r1)
    for (const n of ['ALL', 'ROOTCA', TD]) {
      const v = m.get(n)?.validation_context?.custom_validator_config
      assert.equal(v?.name, 'envoy.tls.cert_validator.spiffe')
      const cfg = decodeSpiffeValidator(v!.typed_config)
      assert.deepEqual(
        cfg.trust_domains.map((d) => d.name),
        ['example.org'],
      )
      assert.deepEqual(
        pemCerts(cfg.trust_domains[0]!.trust_bundle.inline_bytes).map((c) => c.fingerprint256),
        cas.map((c) => c.fingerprint256),
      )
    }
    // Without the validator, ALL cannot be expressed: refused, as SPIRE does.
    const old = client.stream()
    t.after(() => old.close())
    old.send({ resource_names: ['ALL'] })
    assert.equal((await old.failure()).code, INVALID_ARGUMENT)
  })

  await t.test('FetchSecrets, unknown names, bounds', async () => {
    const r = await client.fetch({ resource_names: [] })
    assert.equal(r.version_info, '')
    const m = secrets(r)
    assert.deepEqual([...m.keys()].sort(), [TD, ME])
    checkTls(m.get(ME), cas)
    await assert.rejects(client.fetch({ resource_names: ['spiffe://example.org/other'] }), (e) => {
      assert.equal((e as { code: number }).code, INVALID_ARGUMENT)
      assert.match(String((e as Error).message), /not authorized/)
      return true
    })
    const many = Array.from({ length: 65 }, (_, i) => `spiffe://example.org/${i}`)
    const s = client.stream()
    t.after(() => s.close())
    s.send({ resource_names: many })
    const e = await s.failure()
    assert.equal(e.code, INVALID_ARGUMENT)
    assert.match(e.details, /too many resource names/)
  })

  await t.test('a caller without an entry gets no secret', async () => {
    const child = join(repoRoot, 'dist', 'test', 'helpers', 'sds-child.js')
    const out = await new Promise<Record<string, { error?: { code: number } }>>(
      (resolve, reject) => {
        const p = spawn(process.execPath, [child, socket], {
          uid: 65534,
          gid: 65534,
          stdio: ['ignore', 'pipe', 'inherit'],
        })
        let text = ''
        p.stdout.on('data', (d: Buffer) => {
          text += d.toString()
        })
        p.on('error', reject)
        p.on('close', () => resolve(JSON.parse(text)))
      },
    )
    assert.equal(out.stream?.error?.code, PERMISSION_DENIED, JSON.stringify(out))
    assert.equal(out.fetch?.error?.code, PERMISSION_DENIED, JSON.stringify(out))
  })
})
