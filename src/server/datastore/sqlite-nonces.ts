/**
 * The shared replay cache on SQLite (table seen_nonces): one IMMEDIATE transaction per claim, so
 * two server processes on one datastore never both take the same key.
 */
import { SpiffeEdgeError } from '../../errors.js'
import { type SqliteContext, unsynced } from './sqlite-statements.js'
import { checkInt, checkNonEmpty } from './validate.js'

/** At most this many unexpired keys (about 240 s of 2,000 requests/s); more is refused. */
export const MAX_NONCES = 500_000
/** The row count is read every this many claims (count(*) walks an index), not on each one. */
const COUNT_EVERY = 256
const MAX_KEY = 512
const MAX_ANSWER = 4 << 20

const counted = new WeakMap<SqliteContext, { claims: number; rows: number }>()

export function claimNonce(
  c: SqliteContext,
  key: string,
  digest: string,
  expiresAtMs: number,
  nowMs: number,
): { digest: string; answer?: Uint8Array } | undefined {
  checkNonEmpty('key', key)
  checkInt('expiresAtMs', expiresAtMs, 0)
  checkInt('nowMs', nowMs, 0)
  if (key.length > MAX_KEY)
    throw new SpiffeEdgeError('ERR_DATASTORE_INVALID', `replay key longer than ${MAX_KEY}`, {
      remedy: 'this is a bug in spiffe-edge; please report it',
    })
  return c.write(() => {
    c.st.pruneSomeNonces.run(nowMs)
    const row = c.st.getNonce.get(key)
    if (row && row.expires_at > nowMs) {
      return row.answer
        ? { digest: row.digest, answer: new Uint8Array(row.answer) }
        : { digest: row.digest }
    }
    const n = counted.get(c) ?? { claims: COUNT_EVERY, rows: 0 }
    if (++n.claims >= COUNT_EVERY) {
      n.claims = 0
      n.rows = c.st.countNonces.get()?.n ?? 0
    } else n.rows++
    counted.set(c, n)
    if (n.rows >= MAX_NONCES) {
      n.claims = COUNT_EVERY // count again next time: the tick may have pruned meanwhile
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_BUSY',
        `the replay cache holds ${MAX_NONCES} unexpired requests`,
        { remedy: 'retry later; many agents at once are calling this datastore' },
      )
    }
    c.st.putNonce.run(key, digest, expiresAtMs)
    return undefined
  })
}

export function setNonceAnswer(c: SqliteContext, key: string, answer: Uint8Array): void {
  checkNonEmpty('key', key)
  if (answer.length > MAX_ANSWER)
    throw new SpiffeEdgeError('ERR_DATASTORE_INVALID', 'replay answer too large', {
      remedy: 'this is a bug in spiffe-edge; please report it',
    })
  // Lost on power loss, a duplicate of the frame gets no answer and its agent starts over; the
  // claim itself (above) stays fsynced, so a replay is refused either way.
  unsynced(c, () => c.st.setNonceAnswer.run(Buffer.from(answer), key))
}

export function releaseNonce(c: SqliteContext, key: string, digest: string): void {
  checkNonEmpty('key', key)
  // Lost on power loss, the claim just stays until it expires.
  unsynced(c, () => c.st.releaseNonce.run(key, digest))
}

export function pruneNonces(c: SqliteContext, nowMs: number): number {
  checkInt('nowMs', nowMs, 0)
  return c.st.pruneNonces.run(nowMs).changes
}
