// Generated from proto/workload.proto by scripts/gen-proto-types.mjs: do not edit.
// Singular message fields and oneof members may be absent on the wire, so they are optional.

export type X509SVIDRequest = Record<string, never>

export interface X509SVIDResponse {
  svids: X509SVID[]
  crl: Uint8Array[]
  federatedBundles: Record<string, Uint8Array>
}

export interface X509SVID {
  spiffeId: string
  x509Svid: Uint8Array
  x509SvidKey: Uint8Array
  bundle: Uint8Array
  hint: string
}

export type X509BundlesRequest = Record<string, never>

export interface X509BundlesResponse {
  crl: Uint8Array[]
  bundles: Record<string, Uint8Array>
}

export interface JWTSVIDRequest {
  audience: string[]
  spiffeId: string
}

export interface JWTSVIDResponse {
  svids: JWTSVID[]
}

export interface JWTSVID {
  spiffeId: string
  svid: string
  hint: string
}

export type JWTBundlesRequest = Record<string, never>

export interface JWTBundlesResponse {
  bundles: Record<string, Uint8Array>
}

export interface ValidateJWTSVIDRequest {
  audience: string
  svid: string
}

export interface ValidateJWTSVIDResponse {
  spiffeId: string
  claims?: Record<string, unknown> | null
}

export interface WITSVIDRequest {
  spiffeId: string
}

export interface WITSVIDResponse {
  svids: WITSVID[]
}

export interface WITSVID {
  spiffeId: string
  witSvid: string
  witSvidKey: string
  hint: string
}

export type WITBundlesRequest = Record<string, never>

export interface WITBundlesResponse {
  bundles: Record<string, string>
}
