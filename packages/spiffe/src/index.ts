/**
 * @spiffe-edge/spiffe: SPIFFE for Node.js workloads (go-spiffe v2's shape), built on the
 * spiffe-edge core (src/spiffe). See README.md.
 */
export {
  type Authorizer,
  authorizeAny,
  authorizeID,
  authorizeMemberOf,
  authorizeOneOf,
} from './authorize.js'
export {
  BundleSource,
  type BundleSourceOptions,
  type Bundles,
  createBundleSource,
  type JwtBundleSource,
} from './bundle-source.js'
export {
  type ErrorCode,
  NoSvidError,
  PeerUnauthorizedError,
  SourceClosedError,
  SourceTimeoutError,
  SpiffeEdgeError,
} from './errors.js'
export {
  grpcChannelCredentials,
  grpcPeerId,
  grpcServerCredentials,
  SourceCertificateProvider,
} from './grpc.js'
export { type ValidatedJwt, validateJwtSvid } from './jwt.js'
export {
  createJWTSource,
  type FetchJwtSvidParams,
  JWTSource,
  type JWTSourceOptions,
} from './jwt-source.js'
export type { ReadyOptions, SourceEvents } from './source-base.js'
export {
  JwtBundle,
  type JwtSvid,
  type JwtSvidClaims,
  SpiffeId,
  TrustDomain,
  X509Bundle,
  type X509Svid,
} from './svid.js'
export {
  httpsAgent,
  peerSpiffeId,
  type SpiffeTlsClientOptions,
  type SpiffeTlsServerOptions,
  tlsClientOptions,
  tlsServerOptions,
} from './tls.js'
export type { BackoffOptions } from './watcher.js'
export { GrpcStatus, WorkloadApiError } from './workload/client.js'
export {
  createX509Source,
  type X509Context,
  X509Source,
  type X509SourceOptions,
  type X509SvidPicker,
  type X509SvidSource,
} from './x509-source.js'
