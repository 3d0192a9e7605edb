import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { pidAlive } from '../../hardware-sim/process.js'
import { startSwtpm } from '../../hardware-sim/swtpm.js'
import { TpmContext } from '../../src/tpm/context.js'
import { EK_SLOTS, extractDerCertificate, readEndorsementKeys } from '../../src/tpm/ek.js'
import { cli, run } from '../helpers/exec.js'

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-test-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

test('starting twice on one state dir keeps the same TPM and EKs', async (t) => {
  const stateDir = join(tempDir(t), 'tpm')
  let first: string[]
  {
    await using sim = await startSwtpm({ stateDir })
    await using tpm = await TpmContext.open(sim.tcti)
    first = (await readEndorsementKeys(tpm)).map((k) => k.publicKeySha256!)
  }
  await using sim = await startSwtpm({ stateDir })
  await using tpm = await TpmContext.open(sim.tcti)
  const second = (await readEndorsementKeys(tpm)).map((k) => k.publicKeySha256!)
  assert.equal(first.length, 2, 'an RSA and an ECC EK')
  assert.deepEqual(second, first)
})

test('each EK certificate in NV verifies against ek_ca_bundle with openssl and matches the EK', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  await using tpm = await TpmContext.open(sim.tcti)
  const pems = readFileSync(sim.ekCaBundle, 'utf8').match(
    /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g,
  )
  assert.equal(pems?.length, 2, 'bundle holds the manufacturer root and its issuing CA')
  writeFileSync(join(dir, 'root.pem'), `${pems![0]}\n`)
  writeFileSync(join(dir, 'issuing.pem'), `${pems![1]}\n`)
  const eks = await readEndorsementKeys(tpm)
  assert.deepEqual(
    eks.map((e) => e.algorithm),
    ['rsa-2048', 'ecc-p384'],
  )
  for (const ek of eks) {
    const slot = EK_SLOTS.find((s) => s.algorithm === ek.algorithm)!
    const der = extractDerCertificate(await tpm.nvReadAll(slot.certIndex))
    const certFile = join(dir, `${ek.algorithm}.der`)
    writeFileSync(certFile, der)
    // Independent reader: tpm2_nvread gives the same bytes (before trimming).
    const nvFile = join(dir, `${ek.algorithm}.nv`)
    const nv = await run('tpm2_nvread', [
      '-T',
      sim.tcti,
      '-o',
      nvFile,
      `0x${slot.certIndex.toString(16)}`,
    ])
    assert.equal(nv.code, 0, nv.stderr)
    assert.deepEqual(Buffer.from(extractDerCertificate(readFileSync(nvFile))), Buffer.from(der))
    // Independent verifier: openssl, root trusted, issuing CA untrusted.
    const pem = join(dir, `${ek.algorithm}.pem`)
    assert.equal(
      (await run('openssl', ['x509', '-inform', 'der', '-in', certFile, '-out', pem])).code,
      0,
    )
    const v = await run('openssl', [
      'verify',
      '-CAfile',
      join(dir, 'root.pem'),
      '-untrusted',
      join(dir, 'issuing.pem'),
      pem,
    ])
    assert.equal(v.code, 0, v.stdout + v.stderr)
    assert.match(v.stdout, /: OK/)
    // The certified key is the TPM's EK, as tpm2-tools reads it.
    const spkiFile = join(dir, `${ek.algorithm}.spki`)
    const rp = await run('tpm2_readpublic', [
      '-T',
      sim.tcti,
      '-c',
      `0x${slot.persistentHandle.toString(16)}`,
      '-f',
      'der',
      '-o',
      spkiFile,
    ])
    assert.equal(rp.code, 0, rp.stderr)
    assert.equal(ek.certificate?.publicKeySha256, sha256(readFileSync(spkiFile)))
    assert.equal(ek.certificateMatchesKey, true)
  }
})

test('a certificate from another manufacturer CA does not verify against this bundle', async (t) => {
  const dir = tempDir(t)
  await using a = await startSwtpm()
  await using b = await startSwtpm()
  await using tpm = await TpmContext.open(a.tcti)
  writeFileSync(join(dir, 'a.der'), extractDerCertificate(await tpm.nvReadAll(0x01c00002)))
  await run('openssl', [
    'x509',
    '-inform',
    'der',
    '-in',
    join(dir, 'a.der'),
    '-out',
    join(dir, 'a.pem'),
  ])
  const v = await run('openssl', ['verify', '-CAfile', b.ekCaBundle, join(dir, 'a.pem')])
  assert.notEqual(v.code, 0, 'each state dir has its own manufacturer CA')
})

test('tpm info --json reports EK hashes equal to tpm2_readpublic | sha256sum', async (t) => {
  const dir = tempDir(t)
  await using sim = await startSwtpm()
  const r = await cli(['tpm', 'info', '--tcti', sim.tcti, '--json'])
  assert.equal(r.code, 0, r.stderr)
  const info = JSON.parse(r.stdout) as {
    manufacturer: string
    endorsement_keys: {
      algorithm: string
      persistent_handle: string
      public_key_sha256: string
      certificate: { issuer: string }
    }[]
  }
  assert.equal(info.manufacturer, 'IBM')
  assert.equal(info.endorsement_keys.length, 2)
  for (const ek of info.endorsement_keys) {
    const out = join(dir, `${ek.algorithm}.der`)
    const rp = await run('tpm2_readpublic', [
      '-T',
      sim.tcti,
      '-c',
      ek.persistent_handle,
      '-f',
      'der',
      '-o',
      out,
    ])
    assert.equal(rp.code, 0, rp.stderr)
    const sum = await run('sha256sum', [out])
    assert.equal(ek.public_key_sha256, sum.stdout.split(' ')[0])
    assert.equal(ek.certificate.issuer, 'CN=swtpm-localca')
  }
  const text = await cli(['tpm', 'info', '--tcti', sim.tcti])
  assert.equal(text.code, 0)
  assert.match(text.stdout, /manufacturer:\s+IBM/)
  assert.ok(text.stdout.includes(info.endorsement_keys[0]!.public_key_sha256))
})

test('sim tpm start/stop through the CLI runs a daemon that keeps its EK across restarts', async (t) => {
  const state = join(tempDir(t), 'tpm')
  const start = await cli(['sim', 'tpm', 'start', '--state', state])
  assert.equal(start.code, 0, start.stderr)
  const info = JSON.parse(start.stdout) as {
    tcti: string
    ek_ca_bundle: string
    pid: number
    state: string
  }
  t.after(() => {
    if (pidAlive(info.pid)) process.kill(info.pid, 'SIGKILL')
  })
  assert.match(info.tcti, /^swtpm:host=127\.0\.0\.1,port=\d+$/)
  assert.equal(info.state, state)
  assert.ok(readFileSync(info.ek_ca_bundle, 'utf8').includes('BEGIN CERTIFICATE'))
  assert.ok(pidAlive(info.pid))
  const again = await cli(['sim', 'tpm', 'start', '--state', state])
  assert.equal(
    JSON.parse(again.stdout).pid,
    info.pid,
    'a running TPM is reported, not started twice',
  )
  const ek1 = JSON.parse(
    (await cli(['tpm', 'info', '--tcti', info.tcti, '--json'])).stdout,
  ).endorsement_keys
  const stop = await cli(['sim', 'tpm', 'stop', '--state', state])
  assert.equal(stop.code, 0, stop.stderr)
  assert.equal(pidAlive(info.pid), false)
  const restart = await cli(['sim', 'tpm', 'start', '--state', state])
  const info2 = JSON.parse(restart.stdout) as { tcti: string; pid: number }
  t.after(() => {
    if (pidAlive(info2.pid)) process.kill(info2.pid, 'SIGKILL')
  })
  const ek2 = JSON.parse(
    (await cli(['tpm', 'info', '--tcti', info2.tcti, '--json'])).stdout,
  ).endorsement_keys
  assert.deepEqual(ek2, ek1)
  assert.equal((await cli(['sim', 'tpm', 'stop', '--state', state])).code, 0)
})

test('sim tpm failure paths give coded errors with a remedy', async (t) => {
  const dir = tempDir(t)
  // A busy port.
  const blocker = createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.after(() => blocker.close())
  const port = (blocker.address() as { port: number }).port
  const busy = await cli([
    'sim',
    'tpm',
    'start',
    '--state',
    join(dir, 'a'),
    '--port',
    String(port),
    '--json',
  ])
  assert.equal(busy.code, 1)
  assert.equal(JSON.parse(busy.stderr).error.code, 'ERR_SIM_PORT_IN_USE')
  assert.ok(JSON.parse(busy.stderr).error.remedy)
  // No swtpm binary on PATH.
  const missing = await cli(['sim', 'tpm', 'start', '--state', join(dir, 'b'), '--json'], {
    ...process.env,
    PATH: join(dir, 'empty'),
  })
  assert.equal(JSON.parse(missing.stderr).error.code, 'ERR_SIM_BINARY_MISSING')
  // A state dir that cannot be created (its parent is a file; root ignores permission bits).
  writeFileSync(join(dir, 'file'), 'x')
  const bad = await cli(['sim', 'tpm', 'start', '--state', join(dir, 'file', 'tpm'), '--json'])
  assert.equal(JSON.parse(bad.stderr).error.code, 'ERR_SIM_STATE_DIR')
  // Stopping what is not running.
  const stop = await cli(['sim', 'tpm', 'stop', '--state', join(dir, 'c'), '--json'])
  assert.equal(JSON.parse(stop.stderr).error.code, 'ERR_SIM_NOT_RUNNING')
  // Text mode shows the code and the remedy to a person.
  const text = await cli(['sim', 'tpm', 'stop', '--state', join(dir, 'c')])
  assert.match(text.stderr, /error\[ERR_SIM_NOT_RUNNING\]/)
  assert.match(text.stderr, /remedy:/)
})

test('a disposed simulator leaves no process behind', async () => {
  let pid: number
  {
    await using sim = await startSwtpm()
    pid = sim.pid
    assert.ok(pidAlive(pid))
  }
  assert.equal(pidAlive(pid), false)
})
