/**
 * The sealed SVID cache with the software sealer (the TPM sealer is in
 * test/integration/agent-offline-seal.test.ts): round trip, private keys never in the clear,
 * records bound to their slot and agent, tampering and a foreign key file discard the cache.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { CACHE_FILE, SealedSvidStore } from '../../src/agent/cache/sealed-svids.js'
import type { Log } from '../../src/common/log.js'
import { FileSealer } from '../../src/keymanager/file-sealer.js'
import { AGENT, collect, fixture, td } from '../helpers/svid-fixture.js'

async function store(dir: string, log: Log, keyFile = join(dir, 'cache.key')) {
  return SealedSvidStore.open({
    dataDir: dir,
    sealer: new FileSealer(keyFile),
    trustDomain: td,
    log,
  })
}

test('sealed cache round trip: same SVIDs and keys back, file 0600, keys never in the clear, a warning for the software sealer', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const { svids, bundle } = await fixture(3)
  const a = collect()
  const s1 = await store(dir, a.log)
  assert.ok(a.lines.some((l) => /protected only by the key file/.test(l.msg)))
  await s1.save(AGENT, svids)
  const raw = readFileSync(join(dir, CACHE_FILE))
  assert.equal(statSync(join(dir, CACHE_FILE)).mode & 0o777, 0o600)
  assert.equal(statSync(join(dir, 'cache.key')).mode & 0o777, 0o600)
  for (const s of svids) {
    assert.equal(raw.indexOf(Buffer.from(s.privateKey)), -1, 'a private key is in the clear')
    assert.equal(raw.indexOf(Buffer.from(s.privateKey).toString('base64').slice(8, 60)), -1)
  }
  const c2 = collect()
  const s2 = await store(dir, c2.log)
  const back = await s2.load(AGENT, bundle, Date.now())
  assert.deepEqual(c2.lines, [{ msg: a.lines[0]!.msg, fields: { sealer: 'file' } }])
  assert.deepEqual(
    back.map((r) => [
      r.entryId,
      Buffer.from(r.chain[0]!).toString('hex'),
      Buffer.from(r.privateKey).toString('hex'),
    ]),
    svids.map((r) => [
      r.entryId,
      Buffer.from(r.chain[0]!).toString('hex'),
      Buffer.from(r.privateKey).toString('hex'),
    ]),
  )
  // Another agent identity gets nothing from it (the AAD names the agent).
  const s3 = await store(dir, collect().log)
  assert.deepEqual(
    await s3.load('spiffe://example.org/spire/agent/join_token/other', bundle, Date.now()),
    [],
  )
})

test('a corrupted record, a record moved to another slot, or another key file: the cache is discarded with a log line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const { svids, bundle } = await fixture(2)
  const write = async () => {
    rmSync(join(dir, CACHE_FILE), { force: true })
    await (await store(dir, collect().log)).save(AGENT, svids)
    return JSON.parse(readFileSync(join(dir, CACHE_FILE), 'utf8')) as {
      records: { e: string; s: string; n: string; c: string }[]
    }
  }
  const discarded = async () => {
    const c = collect()
    const s = await store(dir, c.log)
    const got = await s.load(AGENT, bundle, Date.now())
    const line = c.lines.find((l) => /could not be opened or verified; discarded/.test(l.msg))
    return { got, line }
  }

  // One flipped ciphertext byte.
  let f = await write()
  const c = Buffer.from(f.records[0]!.c, 'base64')
  c[5] = c[5]! ^ 1
  f.records[0]!.c = c.toString('base64')
  writeFileSync(join(dir, CACHE_FILE), JSON.stringify(f))
  let r = await discarded()
  assert.deepEqual(r.got, [])
  assert.ok(r.line, 'no discard log line')
  assert.match(String(r.line.fields?.error), /authenticate/)
  assert.throws(() => statSync(join(dir, CACHE_FILE)), /ENOENT/, 'the bad cache is removed')

  // Records swapped between entries: each record's AAD names its entry and SPIFFE ID.
  f = await write()
  const [r0, r1] = f.records
  f.records = [
    { ...r0!, n: r1!.n, c: r1!.c },
    { ...r1!, n: r0!.n, c: r0!.c },
  ]
  writeFileSync(join(dir, CACHE_FILE), JSON.stringify(f))
  r = await discarded()
  assert.deepEqual(r.got, [])
  assert.match(String(r.line?.fields?.error), /authenticate/)

  // Not JSON at all.
  await write()
  writeFileSync(join(dir, CACHE_FILE), '{"v":1,')
  r = await discarded()
  assert.ok(r.line)

  // The cache copied next to another key file (another machine): the DEK does not unwrap.
  await write()
  const other = join(dir, 'other.key')
  writeFileSync(other, Buffer.alloc(32, 7), { mode: 0o600 })
  const cl = collect()
  const s = await store(dir, cl.log, other)
  assert.deepEqual(await s.load(AGENT, bundle, Date.now()), [])
  const line = cl.lines.find((l) => /discarded/.test(l.msg))
  assert.equal(line?.fields?.code, 'ERR_CACHE_SEAL')

  // A chain that does not verify against the bundle the agent holds is refused too.
  await write()
  const foreign = await fixture(1)
  const cf = collect()
  assert.deepEqual(await (await store(dir, cf.log)).load(AGENT, foreign.bundle, Date.now()), [])
  const bad = cf.lines.find((l) => /discarded/.test(l.msg))
  assert.match(String(bad?.fields?.error), /bundle|chain|verif|issuer|authorit/i)
})

test('expired records are not restored, the rest are; a new cache after a discard opens again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const { svids, bundle } = await fixture(2, 60_000)
  const s = await store(dir, collect().log)
  await s.save(AGENT, svids)
  const later = await store(dir, collect().log)
  assert.deepEqual(await later.load(AGENT, bundle, Date.now() + 120_000), [])
  // A discarded cache is replaced by the next save, which opens.
  writeFileSync(join(dir, CACHE_FILE), 'garbage')
  const s2 = await store(dir, collect().log)
  assert.deepEqual(await s2.load(AGENT, bundle, Date.now()), [])
  await s2.save(AGENT, svids)
  const s3 = await store(dir, collect().log)
  assert.equal((await s3.load(AGENT, bundle, Date.now())).length, 2)
})

test('an oversized cache file is refused before it is parsed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'spiffe-edge-seal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, CACHE_FILE), Buffer.alloc((32 << 20) + 1, 0x20))
  const c = collect()
  await store(dir, c.log)
  const line = c.lines.find((l) => /discarded/.test(l.msg))
  assert.match(String(line?.fields?.error), /larger than/)
})
