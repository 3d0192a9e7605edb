// Generated from proto/spiffe_edge/node/v1/node.proto by scripts/gen-proto-types.mjs: do not edit.
// Singular message fields and oneof members may be absent on the wire, so they are optional.

export interface Selector {
  type: string
  value: string
}

export interface AttestationData {
  type: string
  payload: Uint8Array
}

export interface X509SVID {
  certChain: Uint8Array[]
  spiffeId: string
  expiresAt: number
  hint: string
}

export interface AttestAgentRequest {
  params?: AttestAgentRequest_Params | null
  challengeResponse?: Uint8Array | null
}

export interface AttestAgentRequest_Params {
  data?: AttestationData | null
  csr: Uint8Array
}

export interface AttestAgentResponse {
  result?: AttestAgentResponse_Result | null
  challenge?: Uint8Array | null
}

export interface AttestAgentResponse_Result {
  svid?: X509SVID | null
  reattestable: boolean
  selectors: Selector[]
  bundle: string
}

export interface SignedRequest {
  method: string
  body: Uint8Array
  agentChain: Uint8Array[]
  timestampMs: number
  nonce: Uint8Array
  signature: Uint8Array
}

export interface SignedResponse {
  body: Uint8Array
  serverChain: Uint8Array[]
  timestampMs: number
  requestNonce: Uint8Array
  signature: Uint8Array
  errorCode: number
  errorMessage: string
  errorReason: string
}

export interface RenewAgentRequest {
  csr: Uint8Array
}

export interface RenewAgentResponse {
  svid?: X509SVID | null
}

export interface Entry {
  id: string
  spiffeId: string
  parentId: string
  selectors: Selector[]
  x509SvidTtl: number
  federatesWith: string[]
  admin: boolean
  downstream: boolean
  expiresAt: number
  dnsNames: string[]
  revisionNumber: number
  jwtSvidTtl: number
  hint: string
  createdAt: number
}

export interface EntryRevision {
  id: string
  revisionNumber: number
}

export interface SyncEntriesRequest {
  sinceRevision: number
  known: EntryRevision[]
}

export interface SyncEntriesResponse {
  revision: number
  full: boolean
  entries: Entry[]
  deletedIds: string[]
}

export interface NewX509SVIDParams {
  entryId: string
  csr: Uint8Array
}

export interface BatchNewX509SVIDRequest {
  params: NewX509SVIDParams[]
}

export interface BatchNewX509SVIDResponse {
  results: BatchNewX509SVIDResponse_Result[]
}

export interface BatchNewX509SVIDResponse_Result {
  status: number
  message: string
  svid?: X509SVID | null
}

export interface NewJWTSVIDRequest {
  entryId: string
  audience: string[]
  responseKey: string
}

export interface NewJWTSVIDResponse {
  token: string
  spiffeId: string
  expiresAt: number
  issuedAt: number
  hint: string
  encryptedToken: string
}

export type GetBundleRequest = Record<string, never>

export interface GetBundleResponse {
  bundle: string
  sequence: number
}

export interface MqttAttestRequest {
  nonce: Uint8Array
  round: number
  step: Uint8Array
}

export interface MqttAttestResponse {
  round: number
  step: Uint8Array
  serverKey: string
  brokerCredentials: string
}

export interface BundlePush {
  bundle: string
  sequence: number
  serverKey: string
}

export type GetFederatedBundlesRequest = Record<string, never>

export interface FederatedBundle {
  trustDomain: string
  bundle: string
  sequence: number
}

export interface GetFederatedBundlesResponse {
  bundles: FederatedBundle[]
}
