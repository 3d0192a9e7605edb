/**
 * SQLite schema migrations, in order. Append only: a released migration is never edited, because
 * databases in the field already ran it. Version n is migrations[n - 1]; each runs inside the same
 * transaction as the schema_version row that records it, so a crash leaves either all or nothing.
 */
import { SpiffeEdgeError } from '../../errors.js'

export interface Migration {
  readonly version: number
  readonly description: string
  readonly sql: string
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    description: 'entries, tombstones, revision counter, attested nodes, join tokens, bundles, CA',
    sql: `
      -- One global counter: every entry create/update/delete takes the next value in the same
      -- transaction, so commit order equals revision order (SQLite has a single writer).
      CREATE TABLE revision_counter (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
      ) STRICT;
      INSERT INTO revision_counter (id, value) VALUES (1, 0);

      -- Small key/value facts about the store itself (e.g. the tombstone pruning horizon).
      CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        -- Canonical (sorted) selector set: makes the duplicate rule a plain UNIQUE constraint.
        selector_key TEXT NOT NULL,
        -- Lets the subset query compare match counts without re-counting each entry.
        selector_count INTEGER NOT NULL,
        x509_svid_ttl INTEGER NOT NULL,
        jwt_svid_ttl INTEGER NOT NULL,
        hint TEXT NOT NULL,
        admin INTEGER NOT NULL CHECK (admin IN (0, 1)),
        downstream INTEGER NOT NULL CHECK (downstream IN (0, 1)),
        expires_at INTEGER,
        revision INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (spiffe_id, parent_id, selector_key)
      ) STRICT;
      CREATE INDEX entries_parent_id ON entries (parent_id);
      CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
      CREATE INDEX entries_revision ON entries (revision);
      CREATE INDEX entries_expires_at ON entries (expires_at) WHERE expires_at IS NOT NULL;

      CREATE TABLE entry_selectors (
        entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (entry_id, position),
        UNIQUE (entry_id, type, value)
      ) STRICT;
      -- Selector lookups (which entries use type:value) go through this index.
      CREATE INDEX entry_selectors_type_value ON entry_selectors (type, value);

      CREATE TABLE entry_dns_names (
        entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (entry_id, position)
      ) STRICT;

      CREATE TABLE entry_federates_with (
        entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        trust_domain TEXT NOT NULL,
        PRIMARY KEY (entry_id, position)
      ) STRICT;
      CREATE INDEX entry_federates_with_td ON entry_federates_with (trust_domain);

      CREATE TABLE entry_tombstones (
        id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX entry_tombstones_revision ON entry_tombstones (revision);

      CREATE TABLE attested_nodes (
        spiffe_id TEXT PRIMARY KEY,
        attestor_type TEXT NOT NULL,
        cert_serial TEXT NOT NULL,
        cert_not_after INTEGER NOT NULL,
        can_reattest INTEGER NOT NULL CHECK (can_reattest IN (0, 1)),
        banned INTEGER NOT NULL CHECK (banned IN (0, 1)),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE attested_node_selectors (
        spiffe_id TEXT NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (spiffe_id, position),
        UNIQUE (spiffe_id, type, value)
      ) STRICT;
      CREATE INDEX attested_node_selectors_type_value ON attested_node_selectors (type, value);

      -- Only the hash is stored; the caller hashes the secret token.
      CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        spiffe_id TEXT,
        expires_at INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

      CREATE TABLE bundles (
        trust_domain TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        sequence INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE ca_journal (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 2,
    description: 'attested nodes keep the serial RenewAgent replaced',
    sql: `
      -- The agent SVID serial before the last RenewAgent, honoured until the new one is first used
      -- (SPIRE keeps it with the node too): in memory only, a server restart between the renewal
      -- and the agent storing its new SVID stranded the agent. '' = none.
      ALTER TABLE attested_nodes ADD COLUMN previous_cert_serial TEXT NOT NULL DEFAULT '';
    `,
  },
  {
    version: 3,
    description: 'bundles of federated (foreign) trust domains',
    sql: `
      -- Apart from our own bundle (table bundles): an operator's "bundle set" for a foreign trust
      -- domain can then never replace the bundle we sign with, whatever name it is given.
      CREATE TABLE federated_bundles (
        trust_domain TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 4,
    description: 'federation relationships created through the admin API',
    sql: `
      -- SPIRE's dynamic relationships (trust domain API); the config file's stay in the config.
      -- endpoint_spiffe_id is '' for https_web.
      CREATE TABLE federation_relationships (
        trust_domain TEXT PRIMARY KEY,
        bundle_endpoint_url TEXT NOT NULL,
        profile TEXT NOT NULL CHECK (profile IN ('https_web', 'https_spiffe')),
        endpoint_spiffe_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        CHECK ((profile = 'https_spiffe') = (endpoint_spiffe_id != ''))
      ) STRICT;
    `,
  },
  {
    version: 5,
    description: 'the replay cache every server on this datastore shares',
    sql: `
      -- Request nonces (and MQTT attestation frames) already taken, by any server process on this
      -- datastore, until they expire: a replay that reaches another replica is refused too. The
      -- digest tells a duplicate of the same frame from a different one under the same key; the
      -- answer (a signed response) lets any replica resend it for a duplicate. Times in unix ms.
      CREATE TABLE seen_nonces (
        key TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        answer BLOB
      ) STRICT;
      CREATE INDEX seen_nonces_expires_at ON seen_nonces (expires_at);
    `,
  },
  {
    version: 6,
    description: 'attestation challenge rounds any server on this datastore can resume',
    sql: `
      -- An attestation waiting for the agent's answer to a challenge (MQTT, where the next frame
      -- may reach another replica): the attestor's state between rounds, taken (deleted) by the
      -- replica that gets the answer, so a round is resumed once. It never holds a secret the
      -- answer must prove (the attestor stores a hash of it). Times in unix ms.
      CREATE TABLE attest_rounds (
        key TEXT PRIMARY KEY,
        round INTEGER NOT NULL,
        state BLOB NOT NULL,
        expires_at INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX attest_rounds_expires_at ON attest_rounds (expires_at);
    `,
  },
]

/** The schema version this build writes; a database with a higher one is refused. */
export const LATEST_SCHEMA_VERSION: number = migrations.length

// A gap or reordering would make databases diverge silently; fail at import instead.
migrations.forEach((m, i) => {
  if (m.version !== i + 1) {
    throw new SpiffeEdgeError(
      'ERR_INTERNAL_STATE',
      `datastore migrations out of order: index ${i} has version ${m.version}`,
      { remedy: 'this is a bug in spiffe-edge; please report it with the log' },
    )
  }
})
