/** Join tokens (with their node aliases), bundles and the CA journal, on SQLite. */
import { randomUUID } from 'node:crypto'
import { SpiffeEdgeError } from '../../errors.js'
import { insertEntryChildren, nextRevision } from './sqlite-entries.js'
import { isConstraint } from './sqlite-errors.js'
import { aliasEntry, entryParams, nowSeconds } from './sqlite-rows.js'
import type { SqliteContext } from './sqlite-statements.js'
import type { JoinTokenInput } from './types.js'
import {
  checkInt,
  checkJson,
  checkNonEmpty,
  selectorKey,
  validateEntryInput,
  validateJoinToken,
} from './validate.js'

export function createJoinToken(c: SqliteContext, t: JoinTokenInput): void {
  validateJoinToken(t)
  try {
    c.st.insertJoinToken.run(t.tokenHash, t.spiffeId ?? null, t.expiresAt)
  } catch (err) {
    if (isConstraint(err, 'SQLITE_CONSTRAINT_PRIMARYKEY')) {
      // The hash is not named: it identifies a secret.
      throw new SpiffeEdgeError('ERR_DATASTORE_CONFLICT', 'that join token already exists', {
        remedy: 'generate a new random token',
      })
    }
    throw err
  }
}

export function consumeJoinToken(
  c: SqliteContext,
  tokenHash: string,
  now: number,
): { spiffeId?: string } | undefined {
  checkNonEmpty('tokenHash', tokenHash)
  checkInt('now', now)
  const row = c.st.consumeJoinToken.get(tokenHash)
  if (!row || now >= row.expires_at) return undefined
  return row.spiffe_id === null ? {} : { spiffeId: row.spiffe_id }
}

export function consumeJoinTokenForAgent(
  c: SqliteContext,
  tokenHash: string,
  now: number,
  agentId: string,
): { spiffeId?: string; aliasEntryId?: string } | undefined {
  checkNonEmpty('tokenHash', tokenHash)
  checkInt('now', now)
  checkNonEmpty('agentId', agentId)
  // One IMMEDIATE transaction: a crash or a failed alias insert rolls the token delete back.
  return c.write(() => {
    const row = c.st.consumeJoinToken.get(tokenHash)
    if (!row || now >= row.expires_at) return undefined
    if (row.spiffe_id === null) return {}
    const alias = aliasEntry(row.spiffe_id, agentId)
    validateEntryInput(alias)
    const existing = c.st.findDuplicate.get(
      alias.spiffeId,
      alias.parentId,
      selectorKey(alias.selectors),
      '',
    )
    if (existing) return { spiffeId: row.spiffe_id, aliasEntryId: existing.id }
    const id = randomUUID()
    c.st.insertEntry.run(entryParams(id, alias, nextRevision(c), nowSeconds()))
    insertEntryChildren(c, id, alias)
    return { spiffeId: row.spiffe_id, aliasEntryId: id }
  })
}

export function pruneJoinTokens(c: SqliteContext, now: number): number {
  checkInt('now', now)
  return c.st.pruneJoinTokens.run(now).changes
}

export function getBundle(
  c: SqliteContext,
  trustDomain: string,
): { json: string; sequence: number } | undefined {
  checkNonEmpty('trustDomain', trustDomain)
  const row = c.st.getBundle.get(trustDomain)
  return row && { json: row.json, sequence: row.sequence }
}

export function setBundle(
  c: SqliteContext,
  trustDomain: string,
  json: string,
  sequence: number,
): void {
  checkNonEmpty('trustDomain', trustDomain)
  checkJson('json', json)
  checkInt('sequence', sequence, 0)
  c.st.setBundle.run(trustDomain, json, sequence)
}

export function getJournal(c: SqliteContext, name: string): string | undefined {
  checkNonEmpty('name', name)
  return c.st.getJournal.get(name)?.value
}

export function setJournal(c: SqliteContext, name: string, value: string): void {
  checkNonEmpty('name', name)
  checkJson('value', value)
  c.st.setJournal.run(name, value)
}
