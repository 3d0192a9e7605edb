/**
 * MQTT attestation frames come from anyone holding the shared bootstrap password (or from the
 * broker itself), before any authentication, and are claimed in the replay cache every signed
 * node API call also claims its nonce in (seen_nonces, MAX_NONCES rows). A frame that ran
 * nothing (no round waited for it, its params did not decrypt, it did not parse, it was rate
 * limited) must not keep its claim: otherwise a flood of such frames fills the cache for 300 s and
 * every attested agent's calls, on every transport and replica, are refused as busy.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { test } from 'node:test'
import Database from 'better-sqlite3'
import { MemoryKeyManager } from '../../src/keymanager/memory.js'
import { AttestSessions } from '../../src/server/mqtt-attest.js'
import { createCsr } from '../../src/spiffe/csr.js'
import { encryptTo, newEcdhKey } from '../../src/transport/mqtt/jwe.js'
import { codec, type SignedResponse } from '../../src/transport/proto.js'
import { startTestServer } from '../helpers/server.js'

test('MQTT attestation frames that ran nothing leave no claim in the shared replay cache', async () => {
  await using s = await startTestServer({ extraToml: 'attest_rate_per_second = 1' })
  const key = await newEcdhKey()
  const sessions = new AttestSessions({
    api: s.server.api,
    replay: s.server.datastore,
    encryptionKey: key,
  })
  const rows = () => {
    const db = new Database(join(s.dir, 'data', 'datastore.sqlite3'), { readonly: true })
    try {
      return (
        db
          .prepare("SELECT count(*) AS n FROM seen_nonces WHERE key LIKE 'mqtt-attest:%'")
          .get() as {
          n: number
        }
      ).n
    } finally {
      db.close()
    }
  }
  const send = async (round: number, step: Uint8Array, nonce = randomBytes(16)) => {
    const replies: SignedResponse[] = []
    const client = `bs-${randomBytes(16).toString('hex')}`
    await sessions.handle(
      client,
      codec.mqttAttestRequest.encode({ nonce, round, step }),
      (r: SignedResponse) => replies.push(r),
    )
    assert.equal(replies.length, 1, 'each frame is still answered (signed refusal)')
    return replies[0]!.errorReason
  }
  const csr = await createCsr(await new MemoryKeyManager().generateKey('a', 'ec-p256'))
  const params = async (nonce: Buffer) =>
    Buffer.from(
      await encryptTo(
        key.publicJwk,
        codec.attestRequest.encode({
          params: { data: { type: 'join_token', payload: new Uint8Array(8) }, csr },
        }),
        { spe_nonce: nonce.toString('base64url') },
      ),
    )
  const before = rows()
  // A later round nobody waits for, with an answer or with bytes that do not parse.
  for (let i = 0; i < 40; i++) {
    assert.equal(
      await send(2 + (i % 7), codec.attestRequest.encode({ challengeResponse: randomBytes(32) })),
      'unknown_session',
    )
  }
  assert.equal(await send(3, new Uint8Array([0xff, 0xff, 0xff])), 'malformed')
  // Params that do not decrypt with the server key.
  for (let i = 0; i < 20; i++) assert.equal(await send(1, randomBytes(64)), 'unknown_key')
  // Params that decrypt (an unknown join token), beyond the rate limit (one a second through the
  // broker): those within it ran the attestor and keep their claim and answer.
  const reasons: string[] = []
  for (let i = 0; i < 5; i++) {
    const n = randomBytes(16)
    reasons.push(await send(1, await params(n), n))
  }
  assert.ok(reasons.includes('rate_limited'), `one of them is rate limited: ${reasons}`)
  const ran = reasons.filter((r) => r === 'attestation_failed').length
  assert.ok(ran >= 1, `one of them ran the attestor: ${reasons}`)
  assert.equal(ran + reasons.filter((r) => r === 'rate_limited').length, reasons.length)
  assert.equal(rows() - before, ran, 'only the frames that ran keep their claim')
})
