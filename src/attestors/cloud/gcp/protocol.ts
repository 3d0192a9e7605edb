/**
 * gcp_iit wire types, shared by both halves: the agent sends the instance identity token
 * (format=full) it got from the metadata server; nothing else, no challenge.
 */
import { encodeJson, parseJsonPayload } from '../common.js'

export const GCP_IIT = 'gcp_iit'
/** SPIRE's default audience, so agents and servers of either speak to each other by default. */
export const DEFAULT_AUDIENCE = 'spire-gcp-node-attestor'
export const DEFAULT_METADATA_URL = 'http://metadata.google.internal'
/** Google's OAuth2 signing keys (JWKS) for identity tokens. */
export const GOOGLE_JWKS_URL = 'https://www.googleapis.com/oauth2/v3/certs'
export const GOOGLE_ISSUERS = ['https://accounts.google.com', 'accounts.google.com'] as const

export interface GcpPayload {
  readonly version: 1
  readonly token: string
}

export const encodeGcpPayload = (token: string): Uint8Array => encodeJson({ version: 1, token })

export function parseGcpPayload(bytes: Uint8Array): GcpPayload {
  const o = parseJsonPayload(GCP_IIT, bytes, ['version', 'token'])
  return { version: 1, token: o.token as string }
}
