/**
 * The gcp_iit server's Google credentials for the Compute lookup, found in Application Default
 * Credentials order: service_account_file, then GOOGLE_APPLICATION_CREDENTIALS, then gcloud's
 * well-known file, then the GCE metadata server (the server itself on a VM). A file is a
 * service-account key (RFC 7523 JWT bearer grant, RS256 signed with jose) or an authorized_user
 * file (`gcloud auth application-default login`: a refresh-token grant). Read at start, fail
 * closed; each exchange is one bounded call (api.ts).
 */
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { importPKCS8, SignJWT } from 'jose'
import { readChecked } from '../../../common/read-checked.js'
import {
  type AccessToken,
  accessTokenOf,
  apiCall,
  apiFailure,
  insecureUrlProblem,
  tokenUntil,
} from '../api.js'
import { GCP_IIT } from './protocol.js'

/** Read-only Compute access is all instances.get needs. */
const SCOPE = 'https://www.googleapis.com/auth/compute.readonly'
const GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
/** Google caps assertion lifetimes at an hour. */
const ASSERTION_SECONDS = 3600
const GOOGLE_TOKEN_URI = 'https://oauth2.googleapis.com/token'
export const DEFAULT_GCE_METADATA = 'http://metadata.google.internal'
/** gcloud's files are 2-3 KiB; a cap keeps a wrong path (a device, a log) from filling memory. */
const MAX_CREDENTIALS_FILE = 64 * 1024

export interface ServiceAccountKey {
  readonly kind: 'service_account'
  readonly clientEmail: string
  readonly privateKeyId: string
  readonly privateKeyPem: string
  readonly tokenUri: string
  readonly file: string
}

export interface AuthorizedUser {
  readonly kind: 'authorized_user'
  readonly clientId: string
  readonly clientSecret: string
  readonly refreshToken: string
  readonly tokenUri: string
  readonly file: string
}

export interface MetadataServer {
  readonly kind: 'metadata'
  readonly url: string
}

export type GcpCredentials = ServiceAccountKey | AuthorizedUser | MetadataServer

/** A JSON credentials file as gcloud writes them (service_account or authorized_user). */
export function readCredentialsFile(file: string): ServiceAccountKey | AuthorizedUser {
  // stat semantics, not lstat: a mounted secret (Kubernetes) is a symbolic link; its target is
  // checked. One open, the checks on that descriptor, the read through it (no check-then-read gap).
  const r = readChecked(file, {
    noFollow: false,
    maxBytes: MAX_CREDENTIALS_FILE,
    // Anyone who can write it picks the credentials and the token_uri they are sent to.
    check: (st) => ((st.mode & 0o002) !== 0 ? 'writable by anyone; chmod o-w (or 600)' : undefined),
  })
  if ('errno' in r) throw new Error(`${file}: ${r.errno}`)
  if ('refused' in r) throw new Error(`${file}: ${r.refused.replace(/^is /, '')}`)
  if ('oversize' in r) throw new Error(`${file}: over ${MAX_CREDENTIALS_FILE} bytes`)
  const text = r.text
  let o: Record<string, unknown>
  try {
    o = JSON.parse(text) as Record<string, unknown>
  } catch (err) {
    // Not the parser's message: V8 quotes the text around the error, here a private key.
    const at = /position \d+/.exec((err as Error).message)?.[0]
    throw new Error(`${file}: not JSON${at ? ` (at ${at})` : ''}`)
  }
  if (typeof o !== 'object' || o === null) throw new Error(`${file}: not a JSON object`)
  const field = (k: string): string => {
    const v = o[k]
    if (typeof v !== 'string' || v === '') throw new Error(`${file}: ${k} is missing`)
    return v
  }
  const tokenUri = typeof o.token_uri === 'string' ? o.token_uri : GOOGLE_TOKEN_URI
  const bad = insecureUrlProblem('token_uri', tokenUri)
  if (bad) throw new Error(`${file}: ${bad}`)
  if (o.type === 'service_account')
    return {
      kind: 'service_account',
      clientEmail: field('client_email'),
      privateKeyId: field('private_key_id'),
      privateKeyPem: field('private_key'),
      tokenUri,
      file,
    }
  if (o.type === 'authorized_user')
    return {
      kind: 'authorized_user',
      clientId: field('client_id'),
      clientSecret: field('client_secret'),
      refreshToken: field('refresh_token'),
      tokenUri,
      file,
    }
  throw new Error(
    `${file}: type is ${JSON.stringify(o.type)}, not "service_account" or "authorized_user"`,
  )
}

/** gcloud's application-default file: $CLOUDSDK_CONFIG or ~/.config/gcloud. */
function wellKnownFile(env: NodeJS.ProcessEnv): string {
  const dir = env.CLOUDSDK_CONFIG ?? join(env.HOME ?? homedir(), '.config', 'gcloud')
  return join(dir, 'application_default_credentials.json')
}

/**
 * ADC's order. `metadataUrl` is gce_metadata_url; GCE_METADATA_HOST (host[:port]) as Google's
 * libraries read it; else metadata.google.internal. Throws a config problem.
 */
export function findCredentials(
  configured: string | undefined,
  metadataUrl: string | undefined,
  baseDir: string,
  env: NodeJS.ProcessEnv,
): GcpCredentials {
  if (configured) return readCredentialsFile(resolve(baseDir, configured))
  const fromEnv = env.GOOGLE_APPLICATION_CREDENTIALS
  if (fromEnv) return readCredentialsFile(resolve(baseDir, fromEnv))
  const known = wellKnownFile(env)
  if (existsSync(known)) return readCredentialsFile(known)
  const host = env.GCE_METADATA_HOST
  const url = metadataUrl ?? (host ? `http://${host}` : DEFAULT_GCE_METADATA)
  const bad = insecureUrlProblem('gce_metadata_url', url, true)
  if (bad) throw new Error(bad)
  return { kind: 'metadata', url: url.replace(/\/+$/, '') }
}

export function describeCredentials(c: GcpCredentials): string {
  if (c.kind === 'service_account') return `service account ${c.clientEmail}`
  if (c.kind === 'authorized_user') return `authorized user from ${c.file}`
  return `the instance's service account via the metadata server ${c.url}`
}

/** One token exchange for these credentials. */
export async function exchangeToken(
  c: GcpCredentials,
  now: number,
  timeoutMs: number,
): Promise<AccessToken> {
  let what: string
  let r: Awaited<ReturnType<typeof apiCall>>
  if (c.kind === 'metadata') {
    what = `access token from the GCE metadata server ${c.url}`
    const q = new URLSearchParams({ scopes: SCOPE })
    r = await apiCall(
      GCP_IIT,
      what,
      `${c.url}/computeMetadata/v1/instance/service-accounts/default/token?${q}`,
      { headers: { 'Metadata-Flavor': 'Google' } },
      timeoutMs,
    )
  } else {
    let form: Record<string, string>
    if (c.kind === 'service_account') {
      what = `OAuth2 token exchange for ${c.clientEmail} at ${c.tokenUri}`
      let assertion: string
      try {
        const iat = Math.floor(now / 1000)
        assertion = await new SignJWT({ scope: SCOPE })
          .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: c.privateKeyId })
          .setIssuer(c.clientEmail)
          .setAudience(c.tokenUri)
          .setIssuedAt(iat)
          .setExpirationTime(iat + ASSERTION_SECONDS)
          .sign(await importPKCS8(c.privateKeyPem, 'RS256'))
      } catch (err) {
        const why = `signing the assertion with ${c.file} failed (${(err as Error).message})`
        throw apiFailure(GCP_IIT, what, why, err)
      }
      form = { grant_type: GRANT, assertion }
    } else {
      what = `OAuth2 refresh-token exchange for ${c.file} at ${c.tokenUri}`
      form = {
        grant_type: 'refresh_token',
        client_id: c.clientId,
        client_secret: c.clientSecret,
        refresh_token: c.refreshToken,
      }
    }
    r = await apiCall(
      GCP_IIT,
      what,
      c.tokenUri,
      {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(form).toString(),
      },
      timeoutMs,
    )
  }
  const j = r.json as { expires_in?: unknown; error?: unknown; error_description?: unknown }
  if (r.status !== 200) {
    const e =
      j && typeof j.error === 'string'
        ? `${j.error}: ${String(j.error_description ?? '')}`
        : r.text.slice(0, 200)
    throw apiFailure(GCP_IIT, what, `HTTP ${r.status}: ${e}`)
  }
  const value = accessTokenOf(r.json)
  if (!value) throw apiFailure(GCP_IIT, what, 'the answer has no access_token')
  return { value, until: tokenUntil(now, j.expires_in) }
}
