/**
 * Attestation rounds between challenge and answer (table attest_rounds): put by the replica that
 * sent the challenge, taken by whichever replica gets the answer. A take is one DELETE ...
 * RETURNING, atomic across processes, so two replicas given the same answer (a replay, a QoS 1
 * duplicate) never both resume it.
 */
import type BetterSqlite3 from 'better-sqlite3'
import { SpiffeEdgeError } from '../../errors.js'
import { type SqliteContext, unsynced } from './sqlite-statements.js'
import { checkInt, checkNonEmpty } from './validate.js'

/** At most this many rounds wait at once (each for seconds); more is refused, not queued. */
export const MAX_ROUNDS = 10_000
const MAX_KEY = 256
const MAX_STATE = 64 << 10

interface RoundStatements {
  readonly put: BetterSqlite3.Statement<[string, number, Buffer, number]>
  readonly take: BetterSqlite3.Statement<[string, number, number], { state: Buffer }>
  readonly count: BetterSqlite3.Statement<[], { n: number }>
  readonly pruneSome: BetterSqlite3.Statement<[number]>
  readonly prune: BetterSqlite3.Statement<[number]>
}

const prepared = new WeakMap<BetterSqlite3.Database, RoundStatements>()

function st(c: SqliteContext): RoundStatements {
  let s = prepared.get(c.db)
  if (!s) {
    s = {
      // A key is one attempt's round: a second put for it (a bug or a replay) must not replace it.
      put: c.db.prepare(
        'INSERT INTO attest_rounds (key, round, state, expires_at) VALUES (?, ?, ?, ?)',
      ),
      take: c.db.prepare(
        'DELETE FROM attest_rounds WHERE key = ? AND round = ? AND expires_at > ? RETURNING state',
      ),
      count: c.db.prepare('SELECT count(*) AS n FROM attest_rounds'),
      pruneSome: c.db.prepare(
        `DELETE FROM attest_rounds WHERE key IN
           (SELECT key FROM attest_rounds WHERE expires_at <= ? ORDER BY expires_at LIMIT 16)`,
      ),
      prune: c.db.prepare('DELETE FROM attest_rounds WHERE expires_at <= ?'),
    }
    prepared.set(c.db, s)
  }
  return s
}

function checkKey(key: string): void {
  checkNonEmpty('key', key)
  if (key.length > MAX_KEY)
    throw new SpiffeEdgeError('ERR_DATASTORE_INVALID', `round key longer than ${MAX_KEY}`, {
      remedy: 'this is a bug in spiffe-edge; please report it',
    })
}

export function putAttestRound(
  c: SqliteContext,
  key: string,
  round: number,
  state: Uint8Array,
  expiresAtMs: number,
  nowMs: number,
): void {
  checkKey(key)
  checkInt('round', round, 0)
  checkInt('expiresAtMs', expiresAtMs, 0)
  checkInt('nowMs', nowMs, 0)
  if (state.length > MAX_STATE)
    throw new SpiffeEdgeError('ERR_DATASTORE_INVALID', 'attestation round state too large', {
      remedy: 'this is a bug in spiffe-edge; please report it',
    })
  // Not fsynced: a round lost on power loss costs its agent a new attempt; a round coming back
  // after its take was lost cannot be resumed twice, as the answering frame's claim is fsynced.
  unsynced(c, () =>
    c.write(() => {
      const s = st(c)
      s.pruneSome.run(nowMs)
      if ((s.count.get()?.n ?? 0) >= MAX_ROUNDS)
        throw new SpiffeEdgeError(
          'ERR_DATASTORE_BUSY',
          `${MAX_ROUNDS} attestations are waiting for a challenge answer`,
          { remedy: 'retry later; many agents are attesting at once' },
        )
      s.put.run(key, round, Buffer.from(state), expiresAtMs)
    }),
  )
}

export function takeAttestRound(
  c: SqliteContext,
  key: string,
  round: number,
  nowMs: number,
): Uint8Array | undefined {
  checkKey(key)
  checkInt('round', round, 0)
  checkInt('nowMs', nowMs, 0)
  const row = unsynced(c, () => c.write(() => st(c).take.get(key, round, nowMs)))
  return row ? new Uint8Array(row.state) : undefined
}

export function pruneAttestRounds(c: SqliteContext, nowMs: number): number {
  checkInt('nowMs', nowMs, 0)
  return st(c).prune.run(nowMs).changes
}
