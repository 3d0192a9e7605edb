import assert from 'node:assert/strict'
import { test } from 'node:test'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { CaManager } from '../../src/server/ca.js'
import { openMemoryDatastore } from '../../src/server/datastore/sqlite.js'
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js'
import { mintJwtSvid, validateJwtSvid } from '../../src/spiffe/jwt-svid.js'

const td = TrustDomain.parse('example.org')
const HOUR = 3600_000

test('JWT keys rotate in before they sign: each new kid is in the published bundle ~ca_ttl/3 before its first token', async () => {
  let now = Date.parse('2026-11-23T00:00:00Z')
  const clock = { now: () => new Date(now) }
  const datastore = await openMemoryDatastore()
  const ca = await CaManager.open({
    trustDomain: td,
    keyManager: new MemoryKeyManager(),
    datastore,
    keyType: 'ec-p256',
    caTtlSeconds: 24 * 3600,
    clock,
  })
  const published = new Map<string, number>()
  const firstSigned = new Map<string, number>()
  const id = SpiffeId.parse('spiffe://example.org/w')
  let tokens: { token: string; at: number }[] = []
  // Three key lifetimes in 1 h steps, as the server's tick would see them (coarser, not finer).
  for (let step = 0; step <= 72; step++) {
    if (step > 0) {
      now += HOUR
      await ca.rotate()
    }
    // What relying parties can see now: the bundle as stored (what agents and the provider fetch).
    const stored = await datastore.getBundle('example.org')
    const jwks = JSON.parse(stored!.json) as { keys: { use: string; kid?: string }[] }
    for (const k of jwks.keys) {
      if (k.use === 'jwt-svid' && k.kid && !published.has(k.kid)) published.set(k.kid, now)
    }
    const { kid, signer } = await ca.activeJwt()
    if (!firstSigned.has(kid)) firstSigned.set(kid, now)
    assert.ok(published.has(kid), `step ${step}: the signing kid is in the published bundle`)
    const token = await mintJwtSvid({
      spiffeId: id,
      audience: ['rp'],
      signer,
      kid,
      issuedAt: new Date(now),
      expiresAt: new Date(now + 300_000),
    })
    tokens.push({ token, at: now })
    // Every token still unexpired verifies against the bundle published now (retired keys stay).
    tokens = tokens.filter((t) => t.at + 300_000 > now)
    for (const t of tokens) {
      await validateJwtSvid(t.token, {
        audience: 'rp',
        bundles: () => ca.bundle().jwtBundle(),
        now: new Date(now),
      })
    }
  }
  const kids = [...firstSigned.keys()]
  assert.ok(kids.length >= 3, `three rotations seen (${kids.length} keys)`)
  // The first key signs from the first start (there was nothing before it); every later one
  // was published at 1/2 of its predecessor's life and signs from 5/6: 8 h for a 24 h ca_ttl.
  for (const kid of kids.slice(1)) {
    const lead = firstSigned.get(kid)! - published.get(kid)!
    assert.ok(lead >= 7 * HOUR, `kid ${kid} was published ${lead / HOUR} h before signing`)
  }
})
