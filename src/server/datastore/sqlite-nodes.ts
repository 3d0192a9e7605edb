/** Attested nodes and their selectors, on SQLite. */
import { SpiffeEdgeError } from '../../errors.js'
import { nodeNotFound } from './sqlite-errors.js'
import { nodeParams, nowSeconds, toNode } from './sqlite-rows.js'
import type { SqliteContext } from './sqlite-statements.js'
import type { AttestedNode, Selector } from './types.js'
import { checkNonEmpty, invalid, validateAttestedNode } from './validate.js'

export function createAttestedNode(c: SqliteContext, n: AttestedNode): void {
  validateAttestedNode(n)
  c.write(() => {
    if (c.st.getNode.get(n.spiffeId)) {
      throw new SpiffeEdgeError(
        'ERR_DATASTORE_CONFLICT',
        `attested node ${n.spiffeId} already exists`,
        { remedy: 'update or delete the existing node instead of creating it again' },
      )
    }
    c.st.insertNode.run(nodeParams(n))
    insertNodeSelectors(c, n.spiffeId, n.selectors)
  })
}

export function getAttestedNode(c: SqliteContext, spiffeId: string): AttestedNode | undefined {
  checkNonEmpty('spiffeId', spiffeId)
  const row = c.st.getNode.get(spiffeId)
  return row && toNode(row)
}

export function updateAttestedNode(
  c: SqliteContext,
  spiffeId: string,
  patch: Partial<AttestedNode>,
): AttestedNode {
  checkNonEmpty('spiffeId', spiffeId)
  if (typeof patch !== 'object' || patch === null) throw invalid('patch must be an object')
  if (patch.spiffeId !== undefined && patch.spiffeId !== spiffeId) {
    throw invalid('spiffeId of an attested node cannot change; delete and create instead')
  }
  return c.write(() => {
    const row = c.st.getNode.get(spiffeId)
    if (!row) throw nodeNotFound(spiffeId)
    const before = toNode(row)
    const merged: AttestedNode = { ...before, updatedAt: nowSeconds() }
    // Copy only defined keys: a JS caller's explicit undefined must not erase a field.
    for (const [k, v] of Object.entries(patch)) {
      if (v !== undefined) (merged as unknown as Record<string, unknown>)[k] = v
    }
    validateAttestedNode(merged)
    c.st.updateNode.run(nodeParams(merged))
    // A re-attestation usually brings the same selectors: rewriting them would zero and rewrite
    // their pages (secure_delete) for nothing.
    if (patch.selectors !== undefined && !sameSelectors(before.selectors, merged.selectors)) {
      c.st.deleteNodeSelectors.run(spiffeId)
      insertNodeSelectors(c, spiffeId, merged.selectors)
    }
    const stored = c.st.getNode.get(spiffeId)
    if (!stored) throw nodeNotFound(spiffeId)
    return toNode(stored)
  })
}

function sameSelectors(a: readonly Selector[], b: readonly Selector[]): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    if (a[i]!.type !== b[i]!.type || a[i]!.value !== b[i]!.value) return false
  }
  return true
}

export function listAttestedNodes(c: SqliteContext): AttestedNode[] {
  return c.st.listNodes.all().map(toNode)
}

export function deleteAttestedNode(c: SqliteContext, spiffeId: string): void {
  checkNonEmpty('spiffeId', spiffeId)
  // Selectors go with it (ON DELETE CASCADE) in the same implicit transaction.
  if (c.st.deleteNode.run(spiffeId).changes === 0) throw nodeNotFound(spiffeId)
}

export function insertNodeSelectors(
  c: SqliteContext,
  spiffeId: string,
  selectors: readonly Selector[],
): void {
  for (const [i, s] of selectors.entries()) {
    c.st.insertNodeSelector.run(spiffeId, i, s.type, s.value)
  }
}
