/**
 * The server datastore contract. Every method is async so a networked implementation (PostgreSQL)
 * can follow without touching callers; the SQLite implementation is synchronous underneath.
 * Times are unix seconds. Errors are SpiffeEdgeError with ERR_DATASTORE_* codes.
 */

import type { SpiffeEdgeError } from '../../errors.js'

export interface Selector {
  readonly type: string
  readonly value: string
}

export interface EntryInput {
  spiffeId: string
  parentId: string
  /** At least one; AND semantics. Order is kept; duplicates are refused. */
  selectors: Selector[]
  /** 0 = server default. */
  x509SvidTtl: number
  /** 0 = server default. */
  jwtSvidTtl: number
  dnsNames: string[]
  hint: string
  federatesWith: string[]
  admin: boolean
  downstream: boolean
  /** unix s; datastore pruning only (SPIRE: "not a security feature"). */
  expiresAt: number | null
}

export interface RegistrationEntry extends Readonly<EntryInput> {
  /** uuid, assigned by the datastore and never reused. */
  readonly id: string
  readonly revision: number
  readonly createdAt: number
}

export interface AttestedNode {
  spiffeId: string
  attestorType: string
  /** May be empty (join_token attestation yields no selectors). */
  selectors: Selector[]
  certSerial: string
  /**
   * The serial RenewAgent replaced ('' or absent: none), still accepted until `certSerial` is
   * first used. Persisted so a server restart does not strand an agent mid-renewal.
   */
  previousCertSerial?: string
  certNotAfter: number
  canReattest: boolean
  banned: boolean
  createdAt: number
  updatedAt: number
}

export interface EntryChanges {
  /** Current global revision: pass it back as `revision` next time. */
  revision: number
  upserted: RegistrationEntry[]
  /** Entry ids deleted after the requested revision (tombstones). */
  deleted: string[]
  /**
   * Set when the requested revision cannot be served incrementally (its tombstones were pruned,
   * or it is ahead of this datastore, e.g. after a restore): `upserted` is then every entry and the
   * caller must replace its whole set rather than merge.
   */
  resync?: boolean
}

export interface EntryFilter {
  parentId?: string
  spiffeId?: string
  /** Entries whose selectors are all within this set (workload/agent selector matching). */
  selectorsSubsetOf?: Selector[]
}

export interface JoinTokenInput {
  /** The caller hashes the token; the datastore never sees the secret. */
  tokenHash: string
  spiffeId?: string
  expiresAt: number
}

export interface FederatedBundleRow {
  readonly trustDomain: string
  /** SPIFFE bundle JSON. */
  readonly json: string
  readonly sequence: number
  /** unix s of the last write. */
  readonly updatedAt: number
}

/** A federation relationship created through the admin API (SPIRE's dynamic relationship). */
export interface FederationRelationshipRow {
  readonly trustDomain: string
  readonly bundleEndpointUrl: string
  readonly profile: 'https_web' | 'https_spiffe'
  /** '' for https_web. */
  readonly endpointSpiffeId: string
  /** unix s. */
  readonly createdAt: number
  readonly updatedAt: number
}

export interface Datastore extends AsyncDisposable {
  /** Rejects exact duplicates (same spiffeId + parentId + selector set): ERR_DATASTORE_CONFLICT. */
  createEntry(e: EntryInput): Promise<RegistrationEntry>
  /** ERR_DATASTORE_NOT_FOUND if absent; ERR_DATASTORE_CONFLICT if it would duplicate another. */
  updateEntry(id: string, e: EntryInput): Promise<RegistrationEntry>
  /** ERR_DATASTORE_NOT_FOUND if absent. Leaves a tombstone for entryChangesSince. */
  deleteEntry(id: string): Promise<void>
  getEntry(id: string): Promise<RegistrationEntry | undefined>
  /** Sorted by id (SPIRE hands matched entries out sorted by entry id). */
  listEntries(filter?: EntryFilter): Promise<RegistrationEntry[]>
  /**
   * Entries changed after `revision` (sorted by revision) and ids deleted after it. Relies on
   * commit order = revision order, or a reader could pass over a revision that commits late:
   * SQLite has one writer; a PostgreSQL store must take the counter with UPDATE ... RETURNING
   * (row lock held to commit), not a sequence.
   */
  entryChangesSince(revision: number): Promise<EntryChanges>
  currentRevision(): Promise<number>

  createAttestedNode(n: AttestedNode): Promise<void>
  getAttestedNode(spiffeId: string): Promise<AttestedNode | undefined>
  /** updatedAt defaults to now when the patch leaves it out; spiffeId cannot change. */
  updateAttestedNode(spiffeId: string, patch: Partial<AttestedNode>): Promise<AttestedNode>
  listAttestedNodes(): Promise<AttestedNode[]>
  /** ERR_DATASTORE_NOT_FOUND if absent. */
  deleteAttestedNode(spiffeId: string): Promise<void>

  /** ERR_DATASTORE_CONFLICT if the hash already exists. */
  createJoinToken(t: JoinTokenInput): Promise<void>
  /**
   * Atomic single use: deletes the token and returns what it carried. Expired (now >= expiresAt)
   * → undefined (and deleted). Never returns the same token twice, even across processes.
   */
  consumeJoinToken(tokenHash: string, now: number): Promise<{ spiffeId?: string } | undefined>
  /**
   * consumeJoinToken for the agent `agentId` that presents it, plus, when the token carries a
   * spiffeId, that agent's node alias entry (spiffeId, parentId = agentId, selector
   * spiffe_id:agentId), in one transaction: either the token is spent and the alias exists, or
   * neither (a failed alias write leaves the token usable). An identical alias entry already
   * present is reused, not duplicated.
   */
  consumeJoinTokenForAgent(
    tokenHash: string,
    now: number,
    agentId: string,
  ): Promise<{ spiffeId?: string; aliasEntryId?: string } | undefined>
  /** Deletes tokens with expiresAt <= now; returns how many. */
  pruneJoinTokens(now: number): Promise<number>

  getBundle(trustDomain: string): Promise<{ json: string; sequence: number } | undefined>
  setBundle(trustDomain: string, json: string, sequence: number): Promise<void>

  /** Bundles of foreign trust domains (federation), never our own (see getBundle). */
  getFederatedBundle(trustDomain: string): Promise<FederatedBundleRow | undefined>
  /** Inserts or replaces; the caller has validated the bundle and its sequence. */
  setFederatedBundle(trustDomain: string, json: string, sequence: number): Promise<void>
  /** Sorted by trust domain. */
  listFederatedBundles(): Promise<FederatedBundleRow[]>
  /** ERR_DATASTORE_NOT_FOUND when there is none. */
  deleteFederatedBundle(trustDomain: string): Promise<void>

  /** Federation relationships from the admin API (the config file's are not stored). */
  getFederationRelationship(trustDomain: string): Promise<FederationRelationshipRow | undefined>
  /** Sorted by trust domain. */
  listFederationRelationships(): Promise<FederationRelationshipRow[]>
  /** ERR_DATASTORE_CONFLICT if it exists; ERR_DATASTORE_INVALID with `limit` already stored. */
  createFederationRelationship(
    r: Omit<FederationRelationshipRow, 'createdAt' | 'updatedAt'>,
    limit: number,
  ): Promise<FederationRelationshipRow>
  /** Replaces url/profile/endpoint ID; ERR_DATASTORE_NOT_FOUND if absent. */
  updateFederationRelationship(
    r: Omit<FederationRelationshipRow, 'createdAt' | 'updatedAt'>,
  ): Promise<FederationRelationshipRow>
  /** ERR_DATASTORE_NOT_FOUND if absent; the trust domain's bundle stays. */
  deleteFederationRelationship(trustDomain: string): Promise<void>

  /** CA journal blobs (JSON) by name. */
  getJournal(name: string): Promise<string | undefined>
  setJournal(name: string, value: string): Promise<void>
  /**
   * One attestation's writes in one transaction (one commit, so one fsync on the attestation's
   * path): journal blobs, then the node record, created or replaced. A stored record that is
   * banned is never replaced (ERR_DATASTORE_CONFLICT, nothing written): a ban made while the
   * agent attested, after its record was read, must stand.
   */
  saveAttestation(node: AttestedNode, journal: ReadonlyMap<string, string>): Promise<void>

  // Additions beyond the lead's contract.

  /** Deletes entries with expiresAt <= now (tombstoned like deleteEntry); returns how many. */
  pruneExpiredEntries(now: number): Promise<number>
  /**
   * Forgets tombstones with revision <= throughRevision. Callers that last synced before that
   * revision get `resync: true` from entryChangesSince. Returns how many were removed.
   */
  pruneEntryTombstones(throughRevision: number): Promise<number>

  /**
   * The replay cache every server on this datastore shares (bounded, expiring; times in unix ms).
   * Atomic across processes: the first caller for `key` records `digest` until `expiresAtMs` and
   * gets undefined; any later caller, until then, gets what the first recorded (its digest and the
   * answer set for it, if any). Full of unexpired keys: ERR_DATASTORE_BUSY (fail closed).
   *
   * Durable before it resolves, unless `o.sync` is false: then committed (every server sees it at
   * once) but not fsynced; the next fsynced write on this datastore makes it durable too (commits
   * reach disk in order), and only a power loss before that can drop it. For callers whose every
   * effect worth protecting after the claim is itself an fsynced write (an attestation frame: the
   * token spent and the node saved are), so a claim lost with the power had protected nothing.
   */
  claimNonce(
    key: string,
    digest: string,
    expiresAtMs: number,
    nowMs: number,
    o?: { readonly sync?: boolean },
  ): Promise<{ digest: string; answer?: Uint8Array } | undefined>
  /** Records the answer to a claimed key (for duplicates); no-op when the key is gone. */
  setNonceAnswer(key: string, answer: Uint8Array): Promise<void>
  /**
   * Forgets the claim of `key` made with `digest` and no answer yet, for a claimed request that
   * ran nothing: an unauthenticated caller's refused frames then hold no row past their handling.
   */
  releaseNonce(key: string, digest: string): Promise<void>
  /** Forgets expired keys; returns how many. */
  pruneNonces(nowMs: number): Promise<number>

  /**
   * An attestation's state between a challenge and its answer, for whichever server on this
   * datastore gets the answer (bounded: ERR_DATASTORE_BUSY when full; a key is put once).
   */
  putAttestRound(
    key: string,
    round: number,
    state: Uint8Array,
    expiresAtMs: number,
    nowMs: number,
  ): Promise<void>
  /** Takes (deletes) the unexpired state put for `key` at `round`: across processes, once. */
  takeAttestRound(key: string, round: number, nowMs: number): Promise<Uint8Array | undefined>
  /** Forgets expired rounds; returns how many. */
  pruneAttestRounds(nowMs: number): Promise<number>

  /**
   * Whether the store is usable: a bounded consistency check (SQLite: quick_check, at most every
   * few seconds) plus any corruption met by earlier calls. Never throws for an unhealthy store.
   */
  healthCheck(): Promise<{ ok: true } | { ok: false; error: SpiffeEdgeError }>

  /** Idempotent. Every later call rejects with ERR_DATASTORE_CLOSED. */
  close(): Promise<void>
}
