/**
 * `-output json` in SPIRE's shapes: the protobuf JSON of spire-api-sdk messages
 * (proto/spire/api/types/*.proto) as spire-server's CLI prints them — protojson with
 * UseProtoNames and EmitUnpopulated, so snake_case names, every field present, int64/uint64 as
 * decimal strings, bytes as standard base64, one compact object per line. One formatter per
 * message type; the commands only pick the message. Input is what our admin API returns.
 */
import { createPublicKey } from 'node:crypto'

type Json = Record<string, unknown>

/** protojson writes 64-bit integers as strings. */
const int64 = (n: unknown): string => String(Math.trunc(Number(n ?? 0)))

/** types.SPIFFEID {trust_domain, path}. */
export function spiffeIdMsg(id: string): Json {
  const m = /^spiffe:\/\/([^/]+)(\/.*)?$/.exec(id)
  return { trust_domain: m?.[1] ?? '', path: m?.[2] ?? '' }
}

const selectorsMsg = (s: unknown): Json[] =>
  ((s as { type: string; value: string }[] | undefined) ?? []).map((x) => ({
    type: x.type,
    value: x.value,
  }))

/** types.Entry, from the admin API's entry view. */
export function entryMsg(e: Json): Json {
  return {
    id: String(e.id),
    spiffe_id: spiffeIdMsg(String(e.spiffeId)),
    parent_id: spiffeIdMsg(String(e.parentId)),
    selectors: selectorsMsg(e.selectors),
    x509_svid_ttl: Number(e.x509SvidTtl ?? 0),
    federates_with: [...((e.federatesWith as string[] | undefined) ?? [])],
    admin: e.admin === true,
    downstream: e.downstream === true,
    expires_at: int64(e.expiresAt),
    dns_names: [...((e.dnsNames as string[] | undefined) ?? [])],
    revision_number: int64(e.revision),
    store_svid: false,
    jwt_svid_ttl: Number(e.jwtSvidTtl ?? 0),
    hint: typeof e.hint === 'string' ? e.hint : '',
    created_at: int64(e.createdAt),
  }
}

/** types.Agent, from the admin API's attested-node view. */
export function agentMsg(a: Json): Json {
  return {
    id: spiffeIdMsg(String(a.spiffeId)),
    attestation_type: String(a.attestorType ?? ''),
    x509svid_serial_number: String(a.certSerial ?? ''),
    x509svid_expires_at: int64(a.certNotAfter),
    selectors: selectorsMsg(a.selectors),
    banned: a.banned === true,
    can_re_attest: a.canReattest === true,
  }
}

/** google.rpc-style types.Status: code 0 is OK (gRPC codes). */
function statusMsg(err?: { code?: string; message?: string }): Json {
  if (!err) return { code: 0, message: 'OK' }
  const code =
    err.code === 'ERR_DATASTORE_NOT_FOUND'
      ? 5
      : err.code === 'ERR_DATASTORE_CONFLICT'
        ? 6
        : err.code === 'ERR_AUTH'
          ? 7
          : 3 // INVALID_ARGUMENT: what a bad entry is
  return { code, message: err.message ?? '' }
}

/** entry.v1 BatchCreateEntryResponse / BatchUpdateEntryResponse. */
export function entryBatchMsg(
  results: readonly { entry?: Json; error?: { code?: string; message?: string } }[],
): Json {
  return {
    results: results.map((r) => ({
      status: statusMsg(r.error),
      entry: r.entry ? entryMsg(r.entry) : null,
    })),
  }
}

/** entry.v1 BatchDeleteEntryResponse. */
export const entryDeleteMsg = (id: string): Json => ({
  results: [{ status: statusMsg(), id }],
})

/** entry.v1 ListEntriesResponse. */
export const entryListMsg = (entries: readonly Json[]): Json => ({
  entries: entries.map(entryMsg),
  next_page_token: '',
})

/** agent.v1 ListAgentsResponse. */
export const agentListMsg = (agents: readonly Json[]): Json => ({
  agents: agents.map(agentMsg),
  next_page_token: '',
})

/** CountEntriesResponse, CountAgentsResponse, CountBundlesResponse: int32 count. */
export const countMsg = (n: number): Json => ({ count: n })

/** google.protobuf.Empty: what BanAgent and DeleteAgent return. */
export const emptyMsg = (): Json => ({})

/** types.JoinToken. */
export const joinTokenMsg = (r: Json): Json => ({
  value: String(r.token),
  expires_at: int64(r.expires_at),
})

interface Jwk {
  readonly use?: string
  readonly kid?: string
  readonly x5c?: readonly string[]
  readonly [k: string]: unknown
}

/** types.Bundle, from SPIFFE bundle JSON (the JWKS our admin API serves with format=spiffe). */
export function bundleMsg(trustDomain: string, spiffeJson: string): Json {
  const doc = JSON.parse(spiffeJson) as {
    keys?: Jwk[]
    spiffe_sequence?: number
    spiffe_refresh_hint?: number
  }
  const keys = doc.keys ?? []
  return {
    trust_domain: trustDomain.replace(/^spiffe:\/\//, ''),
    x509_authorities: keys
      .filter((k) => k.use === 'x509-svid' && k.x5c?.[0])
      .map((k) => ({ asn1: k.x5c![0], tainted: false, hint: '' })),
    jwt_authorities: keys
      .filter((k) => k.use === 'jwt-svid')
      .map((k) => {
        const { use: _u, kid: _k, x5c: _x, ...pub } = k
        const der = createPublicKey({ key: pub as never, format: 'jwk' }).export({
          type: 'spki',
          format: 'der',
        })
        return {
          public_key: der.toString('base64'),
          key_id: k.kid ?? '',
          expires_at: '0',
          tainted: false,
          hint: '',
        }
      }),
    refresh_hint: int64(doc.spiffe_refresh_hint),
    sequence_number: int64(doc.spiffe_sequence),
  }
}

/** bundle.v1 ListFederatedBundlesResponse. */
export const bundleListMsg = (bundles: readonly Json[]): Json => ({
  bundles: bundles.map((b) => bundleMsg(String(b.trust_domain), String(b.bundle))),
  next_page_token: '',
})

/** types.FederationRelationship (the profile is a oneof: only the set member is written). */
export function federationMsg(r: Json): Json {
  return {
    trust_domain: String(r.trust_domain),
    bundle_endpoint_url: String(r.bundle_endpoint_url),
    ...(r.bundle_endpoint_profile === 'https_spiffe'
      ? {
          https_spiffe: {
            endpoint_spiffe_id: String(r.endpoint_spiffe_id ?? ''),
            bootstrap_bundle: null,
          },
        }
      : { https_web: {} }),
    trust_domain_bundle: null,
  }
}

/** trustdomain.v1 ListFederationRelationshipsResponse. */
export const federationListMsg = (rels: readonly Json[]): Json => ({
  federation_relationships: rels.map(federationMsg),
  next_page_token: '',
})

/** trustdomain.v1 BatchCreate/BatchUpdateFederationRelationshipResponse. */
export function federationBatchMsg(
  results: readonly {
    status: { code: string; message: string }
    federation_relationship?: Json
  }[],
): Json {
  return {
    results: results.map((r) => ({
      status: r.status.code === 'OK' ? statusMsg() : statusMsg(r.status),
      federation_relationship: r.federation_relationship
        ? federationMsg(r.federation_relationship)
        : null,
    })),
  }
}

/** trustdomain.v1 BatchDeleteFederationRelationshipResponse. */
export const federationDeleteMsg = (trustDomain: string): Json => ({
  results: [{ status: statusMsg(), trust_domain: trustDomain }],
})

/** spire-server x509 mint's JSON (a Go struct there, not a proto): DER as base64. */
export const x509MintMsg = (
  chainDer: readonly Buffer[],
  keyDer: Buffer,
  roots: readonly Buffer[],
) => ({
  x509_svid: chainDer.map((c) => c.toString('base64')),
  private_key: keyDer.toString('base64'),
  root_cas: roots.map((c) => c.toString('base64')),
})

/** svid.v1 MintJWTSVIDResponse {svid: types.JWTSVID}. */
export function jwtMintMsg(token: string, spiffeId: string, expiresAt: unknown): Json {
  let iat = 0
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as {
      iat?: number
    }
    iat = Number(claims.iat ?? 0)
  } catch {
    // an unreadable payload keeps issued_at 0 (the server made the token; it is sound)
  }
  return {
    svid: {
      token,
      id: spiffeIdMsg(spiffeId),
      expires_at: int64(expiresAt),
      issued_at: int64(iat),
      hint: '',
    },
  }
}

/** types.Logger: levels as the enum names protojson writes. */
export const loggerMsg = (r: Json): Json => ({
  current_level: String(r.current_level).toUpperCase(),
  launch_level: String(r.launch_level).toUpperCase(),
})

/** The one way `-output json` is printed: a compact object and a newline, as protojson's. */
export const line = (msg: unknown): string => `${JSON.stringify(msg)}\n`
