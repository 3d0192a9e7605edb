/** Shared fixtures of the datastore conformance suite (test/helpers/datastore-conformance.ts). */
import assert from 'node:assert/strict'
import type { ErrorCode } from '../../src/errors.js'
import { SpiffeEdgeError } from '../../src/errors.js'
import type { AttestedNode, Datastore, EntryInput } from '../../src/server/datastore/index.js'

export type TestContext = { after(fn: () => void | Promise<void>): void }

export interface DatastoreBackend {
  /** Fresh, empty storage for one test (removed after it); what `open` takes. */
  fresh(t: TestContext): string
  /** A store over `where`; opening the same `where` again must see the same data. */
  open(where: string): Promise<Datastore>
}

export const AGENT = 'spiffe://example.org/spire/agent/join_token/abc'

/** An entry with nothing but its IDs and selectors set (what a bare `entry create` stores). */
export function bareEntry(
  spiffeId: string,
  parentId: string,
  selectors: EntryInput['selectors'],
  overrides: Partial<EntryInput> = {},
): EntryInput {
  return {
    spiffeId,
    parentId,
    selectors,
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: '',
    federatesWith: [],
    admin: false,
    downstream: false,
    expiresAt: null,
    ...overrides,
  }
}

export function entry(overrides: Partial<EntryInput> = {}): EntryInput {
  return {
    spiffeId: 'spiffe://example.org/workload',
    parentId: AGENT,
    selectors: [
      { type: 'unix', value: 'uid:1000' },
      { type: 'unix', value: 'gid:1000' },
    ],
    x509SvidTtl: 3600,
    jwtSvidTtl: 300,
    dnsNames: ['w.example.org', 'alt.example.org'],
    hint: 'internal',
    federatesWith: ['spiffe://other.org'],
    admin: false,
    downstream: false,
    expiresAt: null,
    ...overrides,
  }
}

export function node(overrides: Partial<AttestedNode> = {}): AttestedNode {
  return {
    spiffeId: AGENT,
    attestorType: 'join_token',
    selectors: [],
    certSerial: '0a1b',
    previousCertSerial: '',
    certNotAfter: 2_000_000_000,
    canReattest: false,
    banned: false,
    createdAt: 1_700_000_000,
    updatedAt: 1_700_000_000,
    ...overrides,
  }
}

export async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof SpiffeEdgeError, `expected SpiffeEdgeError, got ${String(e)}`)
    assert.equal(e.code, code, e.message)
    assert.ok(e.remedy, 'every datastore error carries a remedy')
    return true
  })
}

/** Runs `fn` on a fresh store of `b`, closing it afterwards. */
export function storeRunner(b: DatastoreBackend) {
  return async (t: TestContext, fn: (ds: Datastore) => Promise<void>): Promise<void> => {
    const ds = await b.open(b.fresh(t))
    try {
      await fn(ds)
    } finally {
      await ds.close()
    }
  }
}
