/**
 * azure_msi wire types, shared by both halves: the agent sends the managed identity access token
 * it got from IMDS for the configured resource; no challenge.
 */
import { encodeJson, parseJsonPayload } from '../common.js'

export const AZURE_MSI = 'azure_msi'
/** SPIRE's default resource: Azure Resource Manager, which every managed identity can ask for. */
export const DEFAULT_RESOURCE = 'https://management.azure.com/'
export const DEFAULT_METADATA_URL = 'http://169.254.169.254'
export const DEFAULT_API_VERSION = '2018-02-01'
/** Where a tenant's token signing keys are published (v1 tokens, issuer sts.windows.net). */
export const tenantJwksUrl = (tenant: string) =>
  `https://login.microsoftonline.com/${tenant}/discovery/keys`
export const tenantIssuer = (tenant: string) => `https://sts.windows.net/${tenant}/`

export interface AzurePayload {
  readonly version: 1
  readonly token: string
}

export const encodeAzurePayload = (token: string): Uint8Array => encodeJson({ version: 1, token })

export function parseAzurePayload(bytes: Uint8Array): AzurePayload {
  const o = parseJsonPayload(AZURE_MSI, bytes, ['version', 'token'])
  return { version: 1, token: o.token as string }
}
